// Fused CPU kernels for the v2 student (orbdistill/models/student_v2.py).
//
// The eager v2 step spends most of its time building, multiplying and scattering
// per-edge tensors ([n_edges, F + 2 Fv] floats per layer, and again in the gradient pass).
// These kernels walk the edges of one atom at a time and keep every per-edge quantity in
// registers and a few cache lines, so nothing of width F is ever written per edge.
//
// Operators (namespace `orbdistill`, registered with torch.library):
//
//   edge_csr(index [E], nodes [n, ...]) -> (ptr [n + 1], perm [E])
//       edges grouped by index (a stable counting sort): the edges of row a are
//       perm[ptr[a] : ptr[a + 1]].
//   edge_geometry(vectors [E, 3], freqs [R], prefactor, r_max, p) -> feat [E, R + 4]
//       per edge: the R Bessel functions prefactor * sin(freqs[n] r) / r, the polynomial
//       envelope of order p (zero beyond r_max) and the unit vector. Differentiable in
//       `vectors`.
//   painn_message(feat, phi [N, C], v [N, 3 Fv], senders, receivers, sender CSR,
//                 receiver CSR, wt [R, C], bias [C], F, Fv, first) -> (ds [N, F], dv [N, 3 Fv])
//       the factorised PaiNN message of PaiNNMessage.forward with C = F + 2 Fv:
//       x = phi[j] * (feat_rbf @ wt + bias) * envelope for every edge i -> j, and
//       ds_i = sum a, dv_i = sum (c * unit + b * v_j) (b * v_j left out when `first`).
//       Differentiable in feat, phi and v.
//
// The gradients are first derivatives for inference (forces and stress): the backward
// operators have no derivatives of their own. Training uses the eager model. Forward and backward are parallel over atoms with ATen's thread pool
// (torch.set_num_threads); each thread writes only its own atoms' rows, so there are no
// atomics and the result does not depend on the number of threads.

#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <vector>

// vectorisation hints that also work inside the AT_DISPATCH macros (`omp simd reduction`
// allows the reassociation a vectorised sum needs)
#define ORBDISTILL_PRAGMA(x) _Pragma(#x)
#define ORBDISTILL_SIMD ORBDISTILL_PRAGMA(omp simd)
#define ORBDISTILL_SIMD_SUM(v) ORBDISTILL_PRAGMA(omp simd reduction(+ : v))

namespace orbdistill {

using at::Tensor;

namespace {

constexpr int64_t kGrain = 16;  // atoms per task of parallel_for
constexpr int64_t kMaxRadial = 32;  // radial functions a message may have (stack buffers)

void check_index(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == at::kLong && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous int64 CPU vector, got ", t.scalar_type(), " of shape ", t.sizes());
}

void check_float(const Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == dim &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              name, " must be a contiguous float32/float64 CPU tensor of ", dim, " dimensions, got ",
              t.scalar_type(), " of shape ", t.sizes());
}

// Envelope coefficients: env = 1 - a x^p + b x^(p+1) - c x^(p+2).
struct Envelope {
  double a, b, c, inv_rmax;
  int64_t p;
  Envelope(double r_max, int64_t p_)
      : a((p_ + 1.0) * (p_ + 2.0) / 2.0), b(p_ * (p_ + 2.0)), c(p_ * (p_ + 1.0) / 2.0), inv_rmax(1.0 / r_max), p(p_) {}
  // value and d/dr at r; both zero at and beyond r_max (as the eager mask does)
  void eval(double r, double& env, double& denv) const {
    double x = r * inv_rmax;
    if (x >= 1.0) {
      env = 0.0;
      denv = 0.0;
      return;
    }
    double xp1 = 1.0;  // x^(p-1)
    for (int64_t k = 1; k < p; ++k) xp1 *= x;
    double xp = xp1 * x;
    env = 1.0 - a * xp + b * xp * x - c * xp * x * x;
    denv = (-a * p * xp1 + b * (p + 1) * xp - c * (p + 2) * xp * x) * inv_rmax;
  }
};

// sin(f_n r) and cos(f_n r) for the R frequencies f_n = (n + 1) w + delta_n: the Chebyshev
// recurrence for the exact multiples of w (one sin, one cos), then a second-order
// correction for delta_n (float32-rounded frequencies held in float64 models differ from
// the multiples by ~1e-7 relative; the correction leaves < 1e-11).
inline void harmonics(const double* f, double r, int64_t R, double* s, double* c) {
  const double w = f[0];
  double s1 = std::sin(w * r), c1 = std::cos(w * r);
  double sp = 0.0, cp = 1.0, sn = s1, cn = c1;
  for (int64_t n = 0; n < R; ++n) {
    const double t = (f[n] - (n + 1) * w) * r, t2 = 0.5 * t * t;
    s[n] = sn * (1.0 - t2) + cn * t;
    c[n] = cn * (1.0 - t2) - sn * t;
    double s_next = 2.0 * c1 * sn - sp, c_next = 2.0 * c1 * cn - cp;
    sp = sn;
    cp = cn;
    sn = s_next;
    cn = c_next;
  }
}

void check_freqs(const Tensor& freqs) {
  TORCH_CHECK(freqs.dim() == 1 && freqs.numel() >= 1, "freqs must be a non-empty vector");
  auto f = freqs.to(at::kDouble).contiguous();
  const double* fp = f.data_ptr<double>();
  for (int64_t n = 0; n < f.numel(); ++n) {
    TORCH_CHECK(std::abs(fp[n] - (n + 1) * fp[0]) <= 1e-5 * std::abs(fp[0]) * (n + 1),
                "the fused kernels need Bessel frequencies n * freqs[0] (n = 1..R); freqs[", n, "] = ", fp[n]);
  }
}

}  // namespace

// ----------------------------------------------------------------------------------------
// CSR of an edge index

std::tuple<Tensor, Tensor> edge_csr(const Tensor& index, const Tensor& nodes) {
  check_index(index, "index");
  const int64_t n = nodes.size(0);  // a tensor with one row per atom (its size can be symbolic when traced)
  const int64_t E = index.numel();
  auto ptr = at::zeros({n + 1}, index.options());
  auto perm = at::empty({E}, index.options());
  const int64_t* id = index.data_ptr<int64_t>();
  int64_t* pp = ptr.data_ptr<int64_t>();
  int64_t* pm = perm.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(id[e] >= 0 && id[e] < n, "edge index ", id[e], " out of range for ", n, " atoms");
    ++pp[id[e] + 1];
  }
  for (int64_t a = 0; a < n; ++a) pp[a + 1] += pp[a];
  std::vector<int64_t> cursor(pp, pp + n);
  for (int64_t e = 0; e < E; ++e) pm[cursor[id[e]]++] = e;
  return {ptr, perm};
}

// True when every edge i -> j has a reverse edge j -> i whose vector is exactly the
// negative (a full neighbour list: the pair seen from both atoms, through opposite
// lattice shifts). Edges are matched through the sender CSR; O(E x neighbours).
bool edge_symmetric(const Tensor& senders, const Tensor& receivers, const Tensor& vectors, const Tensor& s_ptr,
                    const Tensor& s_perm) {
  check_index(senders, "senders");
  check_index(receivers, "receivers");
  check_index(s_ptr, "s_ptr");
  check_index(s_perm, "s_perm");
  check_float(vectors, 2, "vectors");
  const int64_t N = s_ptr.numel() - 1;
  std::atomic<bool> ok{true};
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "edge_symmetric", [&] {
    const scalar_t* vec = vectors.data_ptr<scalar_t>();
    const int64_t* rec = receivers.data_ptr<int64_t>();
    const int64_t* ptr = s_ptr.data_ptr<int64_t>();
    const int64_t* perm = s_perm.data_ptr<int64_t>();
    at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end && ok.load(std::memory_order_relaxed); ++i) {
        for (int64_t k = ptr[i]; k < ptr[i + 1]; ++k) {
          const int64_t e = perm[k], j = rec[e];
          const scalar_t* x = vec + 3 * e;
          bool found = false;
          for (int64_t l = ptr[j]; l < ptr[j + 1] && !found; ++l) {
            const int64_t f = perm[l];
            const scalar_t* y = vec + 3 * f;
            found = rec[f] == i && y[0] == -x[0] && y[1] == -x[1] && y[2] == -x[2];
          }
          if (!found) {
            ok.store(false, std::memory_order_relaxed);
            return;
          }
        }
      }
    });
  });
  return ok.load();
}

// ----------------------------------------------------------------------------------------
// Edge geometry: Bessel functions, envelope, unit vector

Tensor edge_geometry_cpu(const Tensor& vectors, const Tensor& freqs, double prefactor, double r_max, int64_t p) {
  check_float(vectors, 2, "vectors");
  TORCH_CHECK(vectors.size(1) == 3, "vectors must be [E, 3]");
  check_freqs(freqs);
  const int64_t E = vectors.size(0), R = freqs.numel(), K = R + 4;
  const auto fd = freqs.to(at::kDouble).contiguous();
  const double* f = fd.data_ptr<double>();
  auto feat = at::empty({E, K}, vectors.options());
  const Envelope envelope(r_max, p);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "edge_geometry", [&] {
    const scalar_t* vec = vectors.data_ptr<scalar_t>();
    scalar_t* out = feat.data_ptr<scalar_t>();
    at::parallel_for(0, E, 256, [&](int64_t begin, int64_t end) {
      std::vector<double> s(R), c(R);
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* x = vec + 3 * e;
        double r = std::sqrt(double(x[0]) * x[0] + double(x[1]) * x[1] + double(x[2]) * x[2]);
        double inv = 1.0 / r, env, denv;
        harmonics(f, r, R, s.data(), c.data());
        envelope.eval(r, env, denv);
        scalar_t* o = out + K * e;
        for (int64_t n = 0; n < R; ++n) o[n] = static_cast<scalar_t>(prefactor * s[n] * inv);
        o[R] = static_cast<scalar_t>(env);
        for (int d = 0; d < 3; ++d) o[R + 1 + d] = static_cast<scalar_t>(x[d] * inv);
      }
    });
  });
  return feat;
}

Tensor edge_geometry_backward_cpu(const Tensor& grad, const Tensor& vectors, const Tensor& freqs, double prefactor,
                                  double r_max, int64_t p) {
  check_float(vectors, 2, "vectors");
  auto g = grad.contiguous();
  const int64_t E = vectors.size(0), R = freqs.numel(), K = R + 4;
  TORCH_CHECK(g.sizes() == at::IntArrayRef({E, K}), "grad must be [E, R + 4]");
  const auto fd = freqs.to(at::kDouble).contiguous();
  const double* f = fd.data_ptr<double>();
  auto gvec = at::empty({E, 3}, vectors.options());
  const Envelope envelope(r_max, p);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "edge_geometry_backward", [&] {
    const scalar_t* vec = vectors.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* out = gvec.data_ptr<scalar_t>();
    at::parallel_for(0, E, 256, [&](int64_t begin, int64_t end) {
      std::vector<double> s(R), c(R);
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t* x = vec + 3 * e;
        const scalar_t* ge = gp + K * e;
        double r = std::sqrt(double(x[0]) * x[0] + double(x[1]) * x[1] + double(x[2]) * x[2]);
        double inv = 1.0 / r, env, denv;
        harmonics(f, r, R, s.data(), c.data());
        envelope.eval(r, env, denv);
        double dr = ge[R] * denv;  // d rbf_n / dr = pref (n w cos(n w r) / r - sin(n w r) / r^2)
        for (int64_t n = 0; n < R; ++n) dr += ge[n] * prefactor * (f[n] * c[n] * inv - s[n] * inv * inv);
        double u[3] = {x[0] * inv, x[1] * inv, x[2] * inv};
        double dot = ge[R + 1] * u[0] + ge[R + 2] * u[1] + ge[R + 3] * u[2];
        for (int d = 0; d < 3; ++d) out[3 * e + d] = static_cast<scalar_t>(dr * u[d] + (ge[R + 1 + d] - dot * u[d]) * inv);
      }
    });
  });
  return gvec;
}

// ----------------------------------------------------------------------------------------
// The PaiNN message

namespace {

struct MessageShape {
  int64_t N, E, R, K, C, F, Fv;
};

MessageShape check_message(const Tensor& feat, const Tensor& phi, const Tensor& v, const Tensor& senders,
                           const Tensor& receivers, const Tensor& s_ptr, const Tensor& s_perm, const Tensor& r_ptr,
                           const Tensor& r_perm, const Tensor& wt, const Tensor& bias, int64_t F, int64_t Fv,
                           bool first) {
  check_float(feat, 2, "feat");
  check_float(phi, 2, "phi");
  check_float(wt, 2, "wt");
  check_float(bias, 1, "bias");
  for (auto* t : {&senders, &receivers, &s_ptr, &s_perm, &r_ptr, &r_perm}) check_index(*t, "edge index and CSR");
  MessageShape m{phi.size(0), feat.size(0), wt.size(0), feat.size(1), phi.size(1), F, Fv};
  TORCH_CHECK(m.K == m.R + 4, "feat must be [E, R + 4] for wt [R, C]");
  TORCH_CHECK(m.R >= 1 && m.R <= kMaxRadial, "the kernels take 1 to ", kMaxRadial, " radial functions, got ", m.R);
  TORCH_CHECK(m.C == F + 2 * Fv && wt.size(1) == m.C && bias.numel() == m.C, "phi, wt and bias must have F + 2 Fv = ",
              F + 2 * Fv, " columns");
  TORCH_CHECK(senders.numel() == m.E && receivers.numel() == m.E && s_perm.numel() == m.E && r_perm.numel() == m.E,
              "edge arrays must have one entry per edge");
  TORCH_CHECK(s_ptr.numel() == m.N + 1 && r_ptr.numel() == m.N + 1, "CSR pointers must have N + 1 entries");
  for (auto* t : {&phi, &wt, &bias}) TORCH_CHECK(t->scalar_type() == feat.scalar_type(), "dtypes differ");
  if (Fv > 0 && !first) {
    check_float(v, 2, "v");
    TORCH_CHECK(v.size(0) == m.N && v.size(1) == 3 * Fv && v.scalar_type() == feat.scalar_type(), "v must be [N, 3 Fv]");
  }
  return m;
}

// Pointers and sizes of one message call (row-major, contiguous).
template <typename T>
struct Message {
  const T* feat;   // [E, R + 4]: rbf, envelope, unit vector
  const T* phi;    // [N, C]
  const T* v;      // [N, 3 Fv] or nullptr (first layer or no vectors)
  const T* wt;     // [R, C]
  const T* bias;   // [C]
  const int64_t *snd, *rec;             // [E]
  const int64_t *s_ptr, *s_perm;        // sender CSR
  const int64_t *r_ptr, *r_perm;        // receiver CSR
  int64_t N, R, K, C, F, Fv;
};

// w[c] = (bias[c] + sum_n rbf[n] wt[n, c]) * env; lin holds the bracket
// Channels in blocks of one 64-byte vector (GCC/Clang vector extensions: AVX-512 where the
// CPU has it, two AVX2 registers or four SSE ones otherwise), whose sums stay in registers
// over the R radial terms; the remainder channels one by one.
template <typename T>
inline void filter(const T* __restrict fe, const T* __restrict wt, const T* __restrict bias, int64_t R, int64_t C,
                   T* __restrict lin, T* __restrict w) {
  typedef T vec __attribute__((vector_size(64), aligned(alignof(T))));
  constexpr int64_t L = 64 / sizeof(T);
  const T env = fe[R];
  int64_t c0 = 0;
  for (; c0 + L <= C; c0 += L) {
    vec acc = *reinterpret_cast<const vec*>(bias + c0);
    for (int64_t n = 0; n < R; ++n) acc += fe[n] * *reinterpret_cast<const vec*>(wt + n * C + c0);
    *reinterpret_cast<vec*>(lin + c0) = acc;
    *reinterpret_cast<vec*>(w + c0) = acc * env;
  }
  for (int64_t c = c0; c < C; ++c) {
    T acc = bias[c];
    for (int64_t n = 0; n < R; ++n) acc += fe[n] * wt[n * C + c];
    lin[c] = acc;
    w[c] = acc * env;
  }
}

// out[n] = sum_c gx[c] p[c] wt[n, c] for n < R, and out[R] = sum_c gx[c] p[c] lin[c]: one
// pass over the channels with R + 1 independent vector accumulators (a reduction per row
// would be a chain of dependent additions).
template <typename T>
inline void channel_sums(const T* __restrict gx, const T* __restrict p, const T* __restrict lin,
                         const T* __restrict wt, int64_t R, int64_t C, T* __restrict out) {
  typedef T vec __attribute__((vector_size(64), aligned(alignof(T))));
  constexpr int64_t L = 64 / sizeof(T);
  vec acc[kMaxRadial + 1];
  for (int64_t n = 0; n <= R; ++n) acc[n] = vec{} ;
  int64_t c0 = 0;
  for (; c0 + L <= C; c0 += L) {
    const vec g = *reinterpret_cast<const vec*>(gx + c0) * *reinterpret_cast<const vec*>(p + c0);
    acc[R] += g * *reinterpret_cast<const vec*>(lin + c0);
    for (int64_t n = 0; n < R; ++n) acc[n] += g * *reinterpret_cast<const vec*>(wt + n * C + c0);
  }
  for (int64_t n = 0; n <= R; ++n) {
    T total = 0;
    for (int64_t l = 0; l < L; ++l) total += acc[n][l];
    out[n] = total;
  }
  for (int64_t c = c0; c < C; ++c) {
    const T g = gx[c] * p[c];
    out[R] += g * lin[c];
    for (int64_t n = 0; n < R; ++n) out[n] += g * wt[n * C + c];
  }
}

// gx[c] = dL/dx_c for the edge i -> j (x = phi_j * w), from the centre's output gradients
// gs [F] and gv [3 Fv], the edge's unit vector and the neighbour's vector state vj
template <typename T>
inline void edge_gx(const T* __restrict gs, const T* __restrict gv, const T* __restrict u, const T* __restrict vj,
                    int64_t F, int64_t Fv, T* __restrict gx) {
  for (int64_t c = 0; c < F; ++c) gx[c] = gs[c];
  const T* __restrict gx0 = gv;
  const T* __restrict gy0 = gv + Fv;
  const T* __restrict gz0 = gv + 2 * Fv;
  for (int64_t q = 0; q < Fv; ++q) gx[F + Fv + q] = gx0[q] * u[0] + gy0[q] * u[1] + gz0[q] * u[2];
  if (vj)
    for (int64_t q = 0; q < Fv; ++q) gx[F + q] = gx0[q] * vj[q] + gy0[q] * vj[Fv + q] + gz0[q] * vj[2 * Fv + q];
  else
    for (int64_t q = 0; q < Fv; ++q) gx[F + q] = 0;
}

template <typename T>
void message_forward(const Message<T>& m, T* ds, T* dv) {
  const int64_t C = m.C, R = m.R, K = m.K, F = m.F, Fv = m.Fv, V = 3 * Fv;
  at::parallel_for(0, m.N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> lin_(C), w_(C);
    T* __restrict lin = lin_.data();
    T* __restrict w = w_.data();
    for (int64_t i = begin; i < end; ++i) {
      T* __restrict dsi = ds + i * F;
      T* __restrict dvi = dv + i * V;
      for (int64_t c = 0; c < F; ++c) dsi[c] = 0;
      for (int64_t c = 0; c < V; ++c) dvi[c] = 0;
      for (int64_t k = m.s_ptr[i]; k < m.s_ptr[i + 1]; ++k) {
        const int64_t e = m.s_perm[k], j = m.rec[e];
        const T* fe = m.feat + K * e;
        if (fe[R] == T(0)) continue;  // beyond the cutoff: sends nothing
        filter(fe, m.wt, m.bias, R, C, lin, w);
        const T* __restrict pj = m.phi + C * j;
        for (int64_t c = 0; c < F; ++c) dsi[c] += pj[c] * w[c];
        if (Fv == 0) continue;
        const T* u = fe + R + 1;
        const T* __restrict vj = m.v ? m.v + V * j : nullptr;
        for (int d = 0; d < 3; ++d) {
          T* __restrict out = dvi + d * Fv;
          const T ud = u[d];
          for (int64_t q = 0; q < Fv; ++q) out[q] += pj[F + Fv + q] * w[F + Fv + q] * ud;
          if (vj)
            for (int64_t q = 0; q < Fv; ++q) out[q] += pj[F + q] * w[F + q] * vj[d * Fv + q];
        }
      }
    }
  });
}

// Pass 1, by sender: the gradient of each edge's features (rbf, envelope, unit vector).
// On a symmetric graph (every edge i -> j has its reverse j -> i with the opposite vector:
// full neighbour lists) the reverse edge has the same filter w and the unit vector -u, and
// its gradient lands on node i, which this thread owns: the receiver pass is folded in
// here and the filter is evaluated once per edge instead of twice.
template <typename T>
void message_backward_by_sender(const Message<T>& m, const T* gds, const T* gdv, bool symmetric, T* gfeat, T* gphi,
                                T* gv) {
  const int64_t C = m.C, R = m.R, K = m.K, F = m.F, Fv = m.Fv, V = 3 * Fv;
  at::parallel_for(0, m.N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> lin_(C), w_(C), gx_(C), gxr_(C);
    T* __restrict lin = lin_.data();
    T* __restrict w = w_.data();
    T* __restrict gx = gx_.data();
    T* __restrict gxr = gxr_.data();
    for (int64_t i = begin; i < end; ++i) {
      const T* gsi = gds + i * F;
      const T* gvi = gdv + i * V;
      T* __restrict gpi = gphi + C * i;
      T* __restrict gvo = gv ? gv + V * i : nullptr;
      if (symmetric) {
        for (int64_t c = 0; c < C; ++c) gpi[c] = 0;
        if (gvo)
          for (int64_t c = 0; c < V; ++c) gvo[c] = 0;
      }
      for (int64_t k = m.s_ptr[i]; k < m.s_ptr[i + 1]; ++k) {
        const int64_t e = m.s_perm[k], j = m.rec[e];
        const T* fe = m.feat + K * e;
        const T env = fe[R];
        if (env == T(0)) continue;
        filter(fe, m.wt, m.bias, R, C, lin, w);
        const T* __restrict pj = m.phi + C * j;
        const T* u = fe + R + 1;
        edge_gx(gsi, gvi, u, m.v ? m.v + V * j : nullptr, F, Fv, gx);
        T* __restrict ge = gfeat + K * e;
        // the R + 1 sums over channels of gw = gx * phi_j: against each row of the filter
        // (the rbf gradients) and against lin (the envelope's), as vector partial sums
        channel_sums(gx, pj, lin, m.wt, R, C, ge);
        for (int64_t n = 0; n < R; ++n) ge[n] *= env;
        for (int d = 0; d < 3; ++d) {
          T acc = 0;
          const T* __restrict gvd = gvi + d * Fv;
          ORBDISTILL_SIMD_SUM(acc)
          for (int64_t q = 0; q < Fv; ++q) acc += gvd[q] * pj[F + Fv + q] * w[F + Fv + q];
          ge[R + 1 + d] = acc;
        }
        if (symmetric) {  // the reverse edge j -> i: neighbour i, centre j
          const T ur[3] = {-u[0], -u[1], -u[2]};
          const T* __restrict gvj = gdv + j * V;
          edge_gx(gds + j * F, gvj, ur, m.v ? m.v + V * i : nullptr, F, Fv, gxr);
          for (int64_t c = 0; c < C; ++c) gpi[c] += gxr[c] * w[c];
          if (gvo) {
            const T* __restrict pi = m.phi + C * i;
            for (int d = 0; d < 3; ++d)
              for (int64_t q = 0; q < Fv; ++q) gvo[d * Fv + q] += gvj[d * Fv + q] * pi[F + q] * w[F + q];
          }
        }
      }
    }
  });
}

// Pass 2 (general graphs), by receiver: the gradient of the neighbours' inputs phi_j, v_j.
template <typename T>
void message_backward_by_receiver(const Message<T>& m, const T* gds, const T* gdv, T* gphi, T* gv) {
  const int64_t C = m.C, R = m.R, K = m.K, F = m.F, Fv = m.Fv, V = 3 * Fv;
  at::parallel_for(0, m.N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> lin_(C), w_(C), gx_(C);
    T* __restrict lin = lin_.data();
    T* __restrict w = w_.data();
    T* __restrict gx = gx_.data();
    for (int64_t j = begin; j < end; ++j) {
      T* __restrict gpj = gphi + C * j;
      T* __restrict gvj = gv ? gv + V * j : nullptr;
      for (int64_t c = 0; c < C; ++c) gpj[c] = 0;
      if (gvj)
        for (int64_t c = 0; c < V; ++c) gvj[c] = 0;
      const T* __restrict pj = m.phi + C * j;
      for (int64_t k = m.r_ptr[j]; k < m.r_ptr[j + 1]; ++k) {
        const int64_t e = m.r_perm[k], i = m.snd[e];
        const T* fe = m.feat + K * e;
        if (fe[R] == T(0)) continue;
        filter(fe, m.wt, m.bias, R, C, lin, w);
        const T* __restrict gvi = gdv + i * V;
        edge_gx(gds + i * F, gvi, fe + R + 1, m.v ? m.v + V * j : nullptr, F, Fv, gx);
        for (int64_t c = 0; c < C; ++c) gpj[c] += gx[c] * w[c];
        if (gvj)
          for (int d = 0; d < 3; ++d)
            for (int64_t q = 0; q < Fv; ++q) gvj[d * Fv + q] += gvi[d * Fv + q] * pj[F + q] * w[F + q];
      }
    }
  });
}

template <typename T>
Message<T> message_args(const MessageShape& s, const Tensor& feat, const Tensor& phi, const Tensor& v,
                        const Tensor& senders, const Tensor& receivers, const Tensor& s_ptr, const Tensor& s_perm,
                        const Tensor& r_ptr, const Tensor& r_perm, const Tensor& wt, const Tensor& bias, bool first) {
  return Message<T>{feat.data_ptr<T>(), phi.data_ptr<T>(), (s.Fv > 0 && !first) ? v.data_ptr<T>() : nullptr,
                    wt.data_ptr<T>(), bias.data_ptr<T>(), senders.data_ptr<int64_t>(), receivers.data_ptr<int64_t>(),
                    s_ptr.data_ptr<int64_t>(), s_perm.data_ptr<int64_t>(), r_ptr.data_ptr<int64_t>(),
                    r_perm.data_ptr<int64_t>(), s.N, s.R, s.K, s.C, s.F, s.Fv};
}

}  // namespace

std::tuple<Tensor, Tensor> painn_message_cpu(const Tensor& feat, const Tensor& phi, const Tensor& v,
                                             const Tensor& senders, const Tensor& receivers, const Tensor& s_ptr,
                                             const Tensor& s_perm, const Tensor& r_ptr, const Tensor& r_perm,
                                             const Tensor& wt, const Tensor& bias, int64_t F, int64_t Fv, bool first,
                                             bool /*symmetric: the forward pass is by sender either way*/) {
  const auto m = check_message(feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt, bias, F, Fv, first);
  auto ds = at::empty({m.N, F}, phi.options());
  auto dv = at::empty({m.N, 3 * Fv}, phi.options());
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "painn_message", [&] {
    message_forward(message_args<scalar_t>(m, feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt,
                                           bias, first),
                    ds.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {ds, dv};
}

std::tuple<Tensor, Tensor, Tensor> painn_message_backward_cpu(
    const Tensor& grad_ds, const Tensor& grad_dv, const Tensor& feat, const Tensor& phi, const Tensor& v,
    const Tensor& senders, const Tensor& receivers, const Tensor& s_ptr, const Tensor& s_perm, const Tensor& r_ptr,
    const Tensor& r_perm, const Tensor& wt, const Tensor& bias, int64_t F, int64_t Fv, bool first, bool symmetric) {
  const auto m = check_message(feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt, bias, F, Fv, first);
  const int64_t V = 3 * Fv;
  auto gds = grad_ds.contiguous();
  auto gdv = grad_dv.contiguous();
  TORCH_CHECK(gds.sizes() == at::IntArrayRef({m.N, F}) && gdv.sizes() == at::IntArrayRef({m.N, V}),
              "grad_ds and grad_dv must be [N, F] and [N, 3 Fv]");
  auto gfeat = at::zeros({m.E, m.K}, feat.options());
  auto gphi = at::empty({m.N, m.C}, phi.options());
  const bool with_v = Fv > 0 && !first;
  auto gv = at::empty({with_v ? m.N : 0, V}, phi.options());
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "painn_message_backward", [&] {
    const auto args = message_args<scalar_t>(m, feat, phi, v, senders, receivers, s_ptr, s_perm, r_ptr, r_perm, wt,
                                             bias, first);
    scalar_t* gvp = with_v ? gv.data_ptr<scalar_t>() : nullptr;
    message_backward_by_sender(args, gds.data_ptr<scalar_t>(), gdv.data_ptr<scalar_t>(), symmetric,
                               gfeat.data_ptr<scalar_t>(), gphi.data_ptr<scalar_t>(), gvp);
    if (!symmetric)
      message_backward_by_receiver(args, gds.data_ptr<scalar_t>(), gdv.data_ptr<scalar_t>(), gphi.data_ptr<scalar_t>(),
                                   gvp);
  });
  return {gfeat, gphi, gv};
}

// Autograd is registered from Python (orbdistill/kernels/__init__.py, torch.library
// register_autograd), which torch.func transforms and make_fx tracing support: the exports
// trace the gradient pass into their graphs as calls of the *_backward operators, so the
// exported files and the LAMMPS plugin need no autograd of these operators.

TORCH_LIBRARY(orbdistill, m) {
  m.def("edge_csr(Tensor index, Tensor nodes) -> (Tensor, Tensor)");
  m.def("edge_symmetric(Tensor senders, Tensor receivers, Tensor vectors, Tensor s_ptr, Tensor s_perm) -> bool");
  m.def("edge_geometry(Tensor vectors, Tensor freqs, float prefactor, float r_max, int p) -> Tensor");
  m.def("edge_geometry_backward(Tensor grad, Tensor vectors, Tensor freqs, float prefactor, float r_max, int p) -> Tensor");
  m.def(
      "painn_message(Tensor feat, Tensor phi, Tensor v, Tensor senders, Tensor receivers, Tensor s_ptr, "
      "Tensor s_perm, Tensor r_ptr, Tensor r_perm, Tensor wt, Tensor bias, int F, int Fv, bool first, bool symmetric) "
      "-> (Tensor, Tensor)");
  m.def(
      "painn_message_backward(Tensor grad_ds, Tensor grad_dv, Tensor feat, Tensor phi, Tensor v, Tensor senders, "
      "Tensor receivers, Tensor s_ptr, Tensor s_perm, Tensor r_ptr, Tensor r_perm, Tensor wt, Tensor bias, int F, "
      "int Fv, bool first, bool symmetric) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(orbdistill, CPU, m) {
  m.impl("edge_csr", edge_csr);
  m.impl("edge_symmetric", edge_symmetric);
  m.impl("edge_geometry", edge_geometry_cpu);
  m.impl("edge_geometry_backward", edge_geometry_backward_cpu);
  m.impl("painn_message", painn_message_cpu);
  m.impl("painn_message_backward", painn_message_backward_cpu);
}

}  // namespace orbdistill
