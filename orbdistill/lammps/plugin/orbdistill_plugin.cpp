// Registers pair_style orbdistill with LAMMPS when `plugin load orbdistillplugin.so` runs.
#include "orbdistill_lammpsplugin.h"

#include "lammps.h"
#include "pair_orbdistill.h"

using namespace LAMMPS_NS;

static Pair *orbdistill_creator(LAMMPS *lmp) { return new PairOrbdistill(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = ((LAMMPS *) lmp)->version;    // built against this LAMMPS' headers
  plugin.style = "pair";
  plugin.name = "orbdistill";
  plugin.info = "orbdistill student pair style (TorchScript, message passing over a ghost shell)";
  plugin.author = "orbdistill developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &orbdistill_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
