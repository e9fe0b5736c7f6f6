#include "pair_orbdistill.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <algorithm>

#include <cmath>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstring>
#include <dlfcn.h>
#include <sstream>
#include <unordered_map>

using namespace LAMMPS_NS;

static const char *ELEMENTS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
static const int N_ELEMENTS = 119;

static std::string species_text(const std::vector<int> &zs)
{
  std::string s;
  for (int z : zs) s += (s.empty() ? "" : " ") + std::string(ELEMENTS[z]);
  return s;
}

PairOrbdistill::PairOrbdistill(LAMMPS *lmp) :
    Pair(lmp), device(torch::kCPU), model_dtype(torch::kFloat64), cutoff(0.0), hops(0),
    torch_threads(0), model_loaded(false), tune_allocator(false)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the pair vectors, in double
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairOrbdistill::~PairOrbdistill()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairOrbdistill::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairOrbdistill::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "device" && iarg + 1 < narg) {
      std::string value = arg[iarg + 1];
      if (value == "cpu") device = torch::Device(torch::kCPU);
      else if (value == "cuda") {
        if (!torch::cuda::is_available())
          error->all(FLERR, "pair_style orbdistill: device cuda asked for, but this libtorch sees no CUDA device");
        device = torch::Device(torch::kCUDA, 0);
      } else
        error->all(FLERR, "pair_style orbdistill: device must be cpu or cuda, got {}", value);
      iarg += 2;
    } else if (key == "allocator" && iarg + 1 < narg) {
      std::string value = arg[iarg + 1];
      if (value != "tuned" && value != "system")
        error->all(FLERR, "pair_style orbdistill: allocator must be tuned or system, got {}", value);
      tune_allocator = (value == "tuned");
      iarg += 2;
    } else if (key == "threads" && iarg + 1 < narg) {
      torch_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (torch_threads < 1) error->all(FLERR, "pair_style orbdistill: threads must be >= 1");
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style orbdistill: unknown or incomplete keyword {} "
                 "(usage: pair_style orbdistill [device cpu|cuda] [threads N] [allocator tuned|system])", key);
    }
  }
  if (torch_threads > 0) at::set_num_threads(torch_threads);
#if defined(__GLIBC__)
  // `allocator tuned`: the model allocates and frees per-edge tensors of tens to hundreds of
  // MB every step, and glibc maps and unmaps each of them (page faults on zeroed memory every
  // step). Keeping freed memory in the process is up to 2.6x faster from ~2,000 atoms on, but
  // the heap fragments and the peak memory grows (a 32,000-atom run was killed for memory on
  // a 24 GB machine), so it is off unless asked for. Results are unchanged either way.
  if (tune_allocator) {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
#endif
}

// The fused kernels (orbdistill/kernels), which exports written with them call as
// orbdistill:: operators. The plugin is built against one build of them and loads it here,
// before the first model, so that their operators are registered when TorchScript reads it.
static std::string load_kernels()
{
#ifdef ORBDISTILL_KERNELS_LIBRARY
  static std::string status;
  if (status.empty()) {
    void *handle = dlopen(ORBDISTILL_KERNELS_LIBRARY, RTLD_NOW | RTLD_GLOBAL);
    status = handle ? std::string("loaded") : std::string("not loaded: ") + dlerror();
  }
  return status;
#else
  return "not built into this plugin";
#endif
}

void PairOrbdistill::read_model(const std::string &path)
{
  torch::jit::ExtraFilesMap extra{{"lammps.txt", ""}};
  const std::string kernels = load_kernels();
  try {
    model = torch::jit::load(path, device, extra);
  } catch (const std::exception &e) {
    std::string hint = std::string(e.what()).find("orbdistill::") != std::string::npos
        ? " The file calls orbdistill's fused kernels, which are " + kernels +
              "; rebuild the plugin (orbdistill lammps build --force) or re-export without them "
              "(orbdistill export PACKAGE --format lammps --no-kernels)."
        : "";
    error->all(FLERR, "pair_style orbdistill: cannot load {} as a TorchScript model ({}).{} "
               "Write it with: orbdistill export PACKAGE --format lammps", path, e.what(), hint);
  }
  model.eval();
  const std::string &text = extra["lammps.txt"];
  if (text.empty())
    error->all(FLERR, "pair_style orbdistill: {} is TorchScript but not an orbdistill LAMMPS export "
               "(no lammps.txt inside). Write it with: orbdistill export PACKAGE --format lammps", path);
  std::istringstream lines(text);
  std::string line, format, dtype;
  int uses_kernels = 0;
  model_species.clear();
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string key;
    words >> key;
    if (key == "format") words >> format;
    else if (key == "cutoff") words >> cutoff;
    else if (key == "hops") words >> hops;
    else if (key == "dtype") words >> dtype;
    else if (key == "kernels") words >> uses_kernels;
    else if (key == "species") {
      int z;
      while (words >> z) model_species.push_back(z);
    }
  }
  if (format != "orbdistill-lammps-1")
    error->all(FLERR, "pair_style orbdistill: {} has format '{}', this plugin reads orbdistill-lammps-1; "
               "re-export the package or rebuild the plugin", path, format);
  if (!(cutoff > 0.0) || hops < 1 || model_species.empty())
    error->all(FLERR, "pair_style orbdistill: {} has incomplete metadata (cutoff {}, hops {}, {} species)",
               path, cutoff, hops, model_species.size());
  if (uses_kernels && device.is_cuda())
    error->all(FLERR, "pair_style orbdistill: {} calls orbdistill's fused kernels, which run on the CPU only; "
               "for device cuda export it with: orbdistill export PACKAGE --format lammps --no-kernels", path);
  if (dtype == "float64") model_dtype = torch::kFloat64;
  else if (dtype == "float32") model_dtype = torch::kFloat32;
  else error->all(FLERR, "pair_style orbdistill: {} has dtype '{}' (float32 or float64 expected)", path, dtype);
  model_loaded = true;
}

void PairOrbdistill::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for orbdistill: expected '* * MODEL_FILE' and one element per atom "
               "type ({} types), got {} arguments", ntypes, narg);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for orbdistill must start with '* *'");
  read_model(arg[2]);

  type_to_z.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; t++) {
    std::string symbol = arg[2 + t];
    int z = 0;
    for (int k = 1; k < N_ELEMENTS; k++)
      if (symbol == ELEMENTS[k]) z = k;
    if (z == 0)
      error->all(FLERR, "pair_coeff for orbdistill: '{}' (atom type {}) is not an element symbol", symbol, t);
    bool known = false;
    for (int s : model_species) known = known || (s == z);
    if (!known)
      error->all(FLERR, "pair_coeff for orbdistill: element {} (atom type {}) is not one the student "
                 "was trained on ({}); its energies there would be meaningless", symbol, t,
                 species_text(model_species));
    type_to_z[t] = z;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairOrbdistill::init_style()
{
  if (!model_loaded) error->all(FLERR, "pair_style orbdistill: pair_coeff * * MODEL elements... must come first");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style orbdistill requires 'newton on' (the forces on ghost atoms must be "
               "summed back to their owners)");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style orbdistill requires 'units metal' (eV, Å, ps), got units {}",
               update->unit_style);
  // every atom up to `hops` bonds from a local atom must be present, with its own
  // neighbours for all but the outermost shell: ghosts out to hops * cutoff, plus the skin
  // the atoms may move by between neighbour-list builds
  // (one rank needs no shell: ghosts there are images of local atoms, see compute())
  double needed = hops * cutoff + neighbor->skin;
  double have = std::max(comm->cutghostuser, cutoff + neighbor->skin);
  if (comm->nprocs > 1 && have < needed - 1e-9)
    error->all(FLERR, "pair_style orbdistill: this student passes messages {} times over a {} Å cutoff, "
               "so each rank needs ghost atoms out to {} Å (steps x cutoff + skin); the communication "
               "cutoff is {} Å. Add: comm_modify cutoff {}", hops, cutoff, needed, have, needed);
  // ghost atoms need neighbour lists of their own only when they stand for other ranks' atoms
  neighbor->add_request(this, comm->nprocs > 1 ? NeighConst::REQ_FULL | NeighConst::REQ_GHOST : NeighConst::REQ_FULL);
}

double PairOrbdistill::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "pair_style orbdistill: all pair coefficients must be set");
  return cutoff;
}

void PairOrbdistill::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double cutsq_model = cutoff * cutoff;
  const bool single = (comm->nprocs == 1);
  // on one rank only local atoms need their neighbours (every ghost is an image of one)
  const int nlisted = single ? list->inum : list->inum + list->gnum;

  // 1. every pair within the cutoff from the neighbour lists (both directions)
  edge_a.clear();
  edge_b.clear();
  edge_r.clear();
  for (int ii = 0; ii < nlisted; ii++) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    const int jnum = list->numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
      edge_a.push_back(i);
      edge_b.push_back(j);
      edge_r.push_back(dx);
      edge_r.push_back(dy);
      edge_r.push_back(dz);
    }
  }
  const int n_pairs = edge_a.size();

  // 2. bonds from the nearest local atom, counted over images (edges were appended atom by
  //    atom, so each first atom's edges are contiguous); one rank: local atoms only
  hop.assign(nall, hops + 1);
  for (int i = 0; i < nlocal; i++) hop[i] = 0;
  if (!single) {
    std::vector<int> start(nall, -1), count(nall, 0);
    for (int e = 0; e < n_pairs; e++) {
      if (start[edge_a[e]] < 0) start[edge_a[e]] = e;
      count[edge_a[e]]++;
    }
    std::vector<int> frontier, next;
    for (int i = 0; i < nlocal; i++) frontier.push_back(i);
    for (int h = 1; h <= hops; h++) {
      next.clear();
      for (int i : frontier) {
        if (start[i] < 0) continue;
        for (int e = start[i]; e < start[i] + count[i]; e++) {
          const int j = edge_b[e];
          if (hop[j] > h) {
            hop[j] = h;
            next.push_back(j);
          }
        }
      }
      frontier.swap(next);
    }
  }

  // 3. one node per atom, not per image: a local atom stands for all its images, a remote
  //    atom is represented by its image nearest the local atoms (whose neighbour list is
  //    complete). The graph is then the periodic graph itself, cut to atoms at most `hops`
  //    bonds from this rank's atoms, with no atom twice.
  std::unordered_map<tagint, int> rep_of_tag;
  rep_of_tag.reserve(2 * nall);
  for (int i = 0; i < nlocal; i++) rep_of_tag[tag[i]] = i;
  for (int i = nlocal; i < nall; i++) {
    if (hop[i] > hops) continue;
    auto it = rep_of_tag.find(tag[i]);
    if (it == rep_of_tag.end()) rep_of_tag[tag[i]] = i;
    else if (it->second >= nlocal && hop[i] < hop[it->second]) it->second = i;
  }
  auto rep = [&](int k) {
    auto it = rep_of_tag.find(tag[k]);
    if (it == rep_of_tag.end())
      error->one(FLERR, "pair_style orbdistill: atom {} is a neighbour but was not reached (ghost cutoff too short?)",
                 tag[k]);
    return it->second;
  };

  // 4. directed edges: from every representative fewer than `hops` bonds away, each of its
  //    pairs; towards a representative at the edge of the region (whose own pairs are not
  //    taken) the reverse direction too. Each kept edge remembers the two images it joins
  //    (forces go to them) and its vector x_to - x_from.
  node_of.assign(nall, -1);
  atom_of.clear();
  keep.clear();    // (pair, direction): 2 e for forward, 2 e + 1 for reverse
  for (int i = 0; i < nlocal; i++) {
    node_of[i] = atom_of.size();
    atom_of.push_back(i);
  }
  auto node = [&](int k) {
    if (node_of[k] < 0) {
      node_of[k] = atom_of.size();
      atom_of.push_back(k);
    }
    return node_of[k];
  };
  std::vector<int64_t> src, dst;
  for (int e = 0; e < n_pairs; e++) {
    const int a = edge_a[e];
    if (hop[a] >= hops || rep(a) != a) continue;
    const int b = rep(edge_b[e]);
    const int na = node(a), nb = node(b);
    keep.push_back(2 * e);
    src.push_back(na);
    dst.push_back(nb);
    if (hop[b] >= hops) {
      keep.push_back(2 * e + 1);
      src.push_back(nb);
      dst.push_back(na);
    }
  }
  const int n_nodes = atom_of.size();
  const int n_edges = keep.size();

  auto opts_f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto opts_i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor vectors = torch::empty({n_edges, 3}, opts_f64);
  torch::Tensor edge_index = torch::empty({2, n_edges}, opts_i64);
  torch::Tensor numbers = torch::empty({n_nodes}, opts_i64);
  torch::Tensor local_mask = torch::zeros({n_nodes}, opts_f64);
  {
    auto v = vectors.accessor<double, 2>();
    auto ei = edge_index.accessor<int64_t, 2>();
    for (int k = 0; k < n_edges; k++) {
      const int e = keep[k] / 2;
      const double sign = (keep[k] % 2) ? -1.0 : 1.0;
      for (int d = 0; d < 3; d++) v[k][d] = sign * edge_r[3 * e + d];
      ei[0][k] = src[k];
      ei[1][k] = dst[k];
    }
    auto z = numbers.accessor<int64_t, 1>();
    auto m = local_mask.accessor<double, 1>();
    for (int n = 0; n < n_nodes; n++) {
      z[n] = type_to_z[type[atom_of[n]]];
      m[n] = atom_of[n] < nlocal ? 1.0 : 0.0;
    }
  }

  // 5. the student: energy of the local atoms, per-atom energies, dE/dr per edge
  std::vector<torch::jit::IValue> inputs{vectors.to(device, model_dtype), numbers.to(device),
                                         edge_index.to(device), local_mask.to(device, model_dtype)};
  torch::jit::IValue out;
  try {
    out = model.forward(inputs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style orbdistill: the model failed on {} atoms and {} pairs: {}", n_nodes, n_edges,
               e.what());
  }
  auto outputs = out.toTuple()->elements();
  torch::Tensor energy = outputs[0].toTensor().to(torch::kCPU, torch::kFloat64);
  torch::Tensor atom_energies = outputs[1].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  torch::Tensor grad = outputs[2].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();

  // 6. forces on the two images an edge joins, r = x_to - x_from: F_from += dE/dr,
  //    F_to -= dE/dr (ghost forces go back to their owners, newton on); virial
  //    -sym(sum r (x) dE/dr) (LAMMPS order xx yy zz xy xz yz)
  auto g = grad.accessor<double, 2>();
  auto v = vectors.accessor<double, 2>();
  double w[6] = {0, 0, 0, 0, 0, 0};
  for (int k = 0; k < n_edges; k++) {
    const int e = keep[k] / 2;
    const bool reverse = keep[k] % 2;
    const int from = reverse ? edge_b[e] : edge_a[e];
    const int to = reverse ? edge_a[e] : edge_b[e];
    const double r[3] = {v[k][0], v[k][1], v[k][2]};
    const double gx = g[k][0], gy = g[k][1], gz = g[k][2];
    f[from][0] += gx;
    f[from][1] += gy;
    f[from][2] += gz;
    f[to][0] -= gx;
    f[to][1] -= gy;
    f[to][2] -= gz;
    if (vflag_either) {
      // the symmetric part: the response to a symmetric strain, as the ASE calculator's
      // stress (r (x) dE/dr is symmetric only for an exactly rotation-invariant energy,
      // which Orb-style students are not)
      const double vir[6] = {-r[0] * gx, -r[1] * gy, -r[2] * gz, -0.5 * (r[0] * gy + r[1] * gx),
                             -0.5 * (r[0] * gz + r[2] * gx), -0.5 * (r[1] * gz + r[2] * gy)};
      for (int d = 0; d < 6; d++) w[d] += vir[d];
      if (vflag_atom)    // half of each edge's share to each end (as LAMMPS' pair styles do)
        for (int d = 0; d < 6; d++) {
          vatom[from][d] += 0.5 * vir[d];
          vatom[to][d] += 0.5 * vir[d];
        }
    }
  }
  if (vflag_global)
    for (int d = 0; d < 6; d++) virial[d] += w[d];
  if (eflag_global) eng_vdwl += energy.item<double>();
  if (eflag_atom) {
    auto ea = atom_energies.accessor<double, 1>();
    for (int i = 0; i < nlocal; i++) eatom[i] += ea[node_of[i]];
  }
}
