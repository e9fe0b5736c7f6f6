/* pair_style orbdistill: an orbdistill student (exported with
 * `orbdistill export PACKAGE --format lammps`) as a LAMMPS pair style.
 *
 *   pair_style orbdistill [device cpu|cuda] [threads N] [allocator tuned|system]
 *   pair_coeff * * model_lammps_float64.pt Cu Au     (one element per atom type)
 *
 * Message passing with L steps makes an atom's energy depend on atoms up to L bonds away.
 * On several MPI ranks each rank builds the graph over its own atoms and a ghost shell of
 * at least L * cutoff (+ skin), evaluates the energies of its own atoms, and takes the
 * gradient with respect to every pair vector; the forces on ghost atoms go back to their
 * owners (newton pair on). Atoms L or more bonds from every local atom have no edges of
 * their own in the graph. On one rank every ghost is a periodic image of a local atom: the
 * graph is the local atoms alone, a ghost neighbour standing for its owner, which is the
 * periodic graph the ASE calculator builds (no shell, no repeated work). */
#ifndef LMP_PAIR_ORBDISTILL_H
#define LMP_PAIR_ORBDISTILL_H

#include "pair.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairOrbdistill : public Pair {
 public:
  PairOrbdistill(class LAMMPS *);
  ~PairOrbdistill() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  void allocate();
  void read_model(const std::string &path);

  torch::jit::Module model;
  torch::Device device;
  torch::ScalarType model_dtype;
  double cutoff;                    // Å
  int hops;                         // message-passing steps of the student
  std::vector<int> model_species;   // atomic numbers the student was trained on
  std::vector<long> type_to_z;      // LAMMPS type -> atomic number
  int torch_threads;
  bool model_loaded;
  bool tune_allocator;    // `allocator tuned`: keep freed memory in the process (glibc mallopt)

  // work arrays reused between steps
  std::vector<int> hop, node_of, atom_of, edge_a, edge_b, keep;
  std::vector<double> edge_r;
};

}    // namespace LAMMPS_NS

#endif
