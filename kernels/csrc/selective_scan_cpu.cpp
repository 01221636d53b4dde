// Fused selective scan (Mamba S6) for CPU tensors, forward and backward.
//
// Layout as mamba-ssm's selective_scan_fn: u, delta, y (batch, dim, L); A (dim, N);
// B, C (batch, G, N, L) with channel d in group d / (dim / G); D, delta_bias (dim).
//
//   dt  = softplus(delta + delta_bias)          (bias and softplus optional)
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
//   y_t = sum_n C_t,n * h_t,n + D * u_t
//
// One pass over the inputs instead of the half-dozen full-size temporaries the torch
// path makes. Work goes in blocks of kRows channels of one group (they share B and C)
// and kChunk time steps (buffers stay in L1): per chunk the elementwise parts run along
// time, where the compiler vectorises them, and the recurrence runs kRows independent
// chains side by side, which hides the multiply-add latency of a single chain.
//
// float uses polynomial exp / log1p that vectorise (libm calls would not, and would cost
// 5x the rest of the kernel); their error is ~1e-7 relative. double uses libm, for
// gradcheck. The backward recomputes h chunk by chunk from the chunk-start states of a
// first forward sweep, so it stores O(L / kChunk) states, not h itself.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 256;
constexpr int kRows = 8;

inline float exp_poly(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln 2 / 2; Taylor to r^7 (< 2e-8).
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // compare-and-select keeps NaN
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round-to-nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;              // Cody-Waite ln 2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float log1p_unit(float e) {
  // log1p(e) for e in [0, 1] = 2 atanh(s), s = e / (2 + e) in [0, 1/3]: an odd series in
  // s whose terms shrink by 1/9; relative accuracy holds for tiny e.
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

template <typename T>
struct Math;

template <>
struct Math<float> {
  static float exp(float x) { return exp_poly(x); }
  static float softplus(float x) {
    return (x > 0.0f ? x : 0.0f) + log1p_unit(exp_poly(-std::fabs(x)));
  }
  static float sigmoid(float x) {
    const float e = exp_poly(-std::fabs(x));
    const float p = 1.0f / (1.0f + e);
    return x >= 0.0f ? p : e * p;
  }
};

template <>
struct Math<double> {
  static double exp(double x) { return std::exp(x); }
  static double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
  static double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
};

// Pointers and sizes shared by all blocks of one call.
template <typename T>
struct Problem {
  const T* u;
  const T* delta;
  const T* A;
  const T* B;
  const T* C;
  const T* D;     // nullptr: no skip term
  const T* bias;  // nullptr: no bias
  bool softplus;
  int64_t batch, dim, L, N, G;
  int64_t per_group() const { return dim / G; }
  int64_t blocks_per_group() const { return (per_group() + kRows - 1) / kRows; }
  int64_t nchunks() const { return (L + kChunk - 1) / kChunk; }
  int64_t row(int64_t b, int64_t d) const { return (b * dim + d) * L; }
  int64_t bc_row(int64_t b, int64_t g, int64_t n) const { return ((b * G + g) * N + n) * L; }
};

// Per-thread scratch for one block of kRows channels and one chunk of time steps.
template <typename T>
struct Scratch {
  alignas(64) T dt[kRows][kChunk];
  alignas(64) T a[kRows][kChunk];
  alignas(64) T x[kRows][kChunk];  // dt*B*u, then h
  alignas(64) T g[kRows][kChunk];  // backward: d softplus / d input
  alignas(64) T ddt[kRows][kChunk];
  alignas(64) T gh[kRows][kChunk];  // backward: dL/dh
  alignas(64) T gy[kRows][kChunk];  // backward: dL/dy (rows past the block stay 0)
  void clear() { std::memset(static_cast<void*>(this), 0, sizeof(*this)); }
};

// dt (and, when wanted, d softplus / d input) for rows [0, R) of a chunk; rows R.. stay 0.
template <typename T>
void chunk_dt(const Problem<T>& p, Scratch<T>& s, int64_t b, int64_t d0, int R, int64_t t0, int64_t len,
              bool with_sigmoid) {
  for (int r = 0; r < R; ++r) {
    const T* dl = p.delta + p.row(b, d0 + r) + t0;
    const T bias = p.bias ? p.bias[d0 + r] : T(0);
    T* dt = s.dt[r];
    T* sg = s.g[r];
    if (p.softplus) {
      for (int64_t t = 0; t < len; ++t) dt[t] = Math<T>::softplus(dl[t] + bias);
      if (with_sigmoid)
        for (int64_t t = 0; t < len; ++t) sg[t] = Math<T>::sigmoid(dl[t] + bias);
    } else {
      for (int64_t t = 0; t < len; ++t) dt[t] = dl[t] + bias;
      if (with_sigmoid)
        for (int64_t t = 0; t < len; ++t) sg[t] = T(1);
    }
  }
}

// a = exp(dt * A_n) and x = dt * B_n * u for state n.
template <typename T>
void chunk_inputs(const Problem<T>& p, Scratch<T>& s, int64_t b, int64_t d0, int R, int64_t n, int64_t t0,
                  int64_t len) {
  const T* Bn = p.B + p.bc_row(b, (d0) / p.per_group(), n) + t0;
  for (int r = 0; r < R; ++r) {
    const T An = p.A[(d0 + r) * p.N + n];
    const T* ur = p.u + p.row(b, d0 + r) + t0;
    const T* dt = s.dt[r];
    T* a = s.a[r];
    T* x = s.x[r];
    for (int64_t t = 0; t < len; ++t) {
      a[t] = Math<T>::exp(dt[t] * An);
      x[t] = dt[t] * Bn[t] * ur[t];
    }
  }
}

// h_t = a_t h_{t-1} + x_t for kRows chains at once; x is overwritten with h.
template <typename T>
inline void chunk_recurrence(Scratch<T>& s, T* h, int64_t len) {
  T hv[kRows];
  for (int r = 0; r < kRows; ++r) hv[r] = h[r];
  for (int64_t t = 0; t < len; ++t) {
    for (int r = 0; r < kRows; ++r) {
      hv[r] = s.a[r][t] * hv[r] + s.x[r][t];
      s.x[r][t] = hv[r];
    }
  }
  for (int r = 0; r < kRows; ++r) h[r] = hv[r];
}

template <typename T>
void forward_block(const Problem<T>& p, T* y, int64_t b, int64_t d0, int R) {
  Scratch<T>& s = *new Scratch<T>();  // ~40 KB (float): too big for some thread stacks
  s.clear();
  std::vector<T> h(p.N * kRows, T(0));
  const int64_t g = d0 / p.per_group();
  for (int64_t t0 = 0; t0 < p.L; t0 += kChunk) {
    const int64_t len = std::min(kChunk, p.L - t0);
    chunk_dt(p, s, b, d0, R, t0, len, false);
    for (int r = 0; r < R; ++r) {
      T* yr = y + p.row(b, d0 + r) + t0;
      const T* ur = p.u + p.row(b, d0 + r) + t0;
      const T Dd = p.D ? p.D[d0 + r] : T(0);
      for (int64_t t = 0; t < len; ++t) yr[t] = Dd * ur[t];
    }
    for (int64_t n = 0; n < p.N; ++n) {
      chunk_inputs(p, s, b, d0, R, n, t0, len);
      chunk_recurrence(s, h.data() + n * kRows, len);
      const T* Cn = p.C + p.bc_row(b, g, n) + t0;
      for (int r = 0; r < R; ++r) {
        T* yr = y + p.row(b, d0 + r) + t0;
        const T* hr = s.x[r];
        for (int64_t t = 0; t < len; ++t) yr[t] += Cn[t] * hr[t];
      }
    }
  }
  delete &s;
}

// Gradient outputs of one call; dB/dC/dA/dD/dbias go to per-task partial buffers that
// the caller sums, so that no two threads ever write the same element.
template <typename T>
struct Grads {
  const T* gy;
  T* du;
  T* ddelta;
  double* dA;     // (batch, dim, N)
  double* dD;     // (batch, dim)
  double* dbias;  // (batch, dim)
  T* dB;          // (batch, G, S, N, L)
  T* dC;
  int64_t S;
};

template <typename T>
void backward_block(const Problem<T>& p, const Grads<T>& gr, int64_t b, int64_t d0, int R, int64_t split) {
  Scratch<T>& s = *new Scratch<T>();
  s.clear();
  const int64_t N = p.N, L = p.L, nchunks = p.nchunks();
  const int64_t g = d0 / p.per_group();
  // Sweep 1: the state entering every chunk.
  std::vector<T> states(nchunks * N * kRows, T(0));
  std::vector<T> h(N * kRows, T(0));
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t t0 = c * kChunk, len = std::min(kChunk, L - t0);
    chunk_dt(p, s, b, d0, R, t0, len, false);
    for (int64_t n = 0; n < N; ++n) {
      std::copy(h.begin() + n * kRows, h.begin() + (n + 1) * kRows, states.begin() + (c * N + n) * kRows);
      chunk_inputs(p, s, b, d0, R, n, t0, len);
      chunk_recurrence(s, h.data() + n * kRows, len);
    }
  }
  // Sweep 2, backwards in time. carry = a_{t+1} * dL/dh_{t+1}, handed to the chunk before.
  std::vector<T> carry(N * kRows, T(0));
  std::vector<double> dA_acc(N * kRows, 0.0), dD_acc(kRows, 0.0), dbias_acc(kRows, 0.0);
  const int64_t part = ((b * p.G + g) * gr.S + split) * N;  // first (N, L) row of this task's partials
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, len = std::min(kChunk, L - t0);
    chunk_dt(p, s, b, d0, R, t0, len, true);
    for (int r = 0; r < R; ++r) {
      const int64_t o = p.row(b, d0 + r) + t0;
      const T* __restrict gy = gr.gy + o;
      const T* __restrict ur = p.u + o;
      T* __restrict du = gr.du + o;
      T* __restrict gys = s.gy[r];
      const T Dd = p.D ? p.D[d0 + r] : T(0);
      double acc = 0.0;
      for (int64_t t = 0; t < len; ++t) {
        gys[t] = gy[t];
        du[t] = gy[t] * Dd;
        acc += static_cast<double>(gy[t] * ur[t]);
      }
      dD_acc[r] += acc;
      std::fill(s.ddt[r], s.ddt[r] + len, T(0));
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* Bn = p.B + p.bc_row(b, g, n) + t0;
      const T* Cn = p.C + p.bc_row(b, g, n) + t0;
      T* dBn = gr.dB + (part + n) * L + t0;
      T* dCn = gr.dC + (part + n) * L + t0;
      chunk_inputs(p, s, b, d0, R, n, t0, len);
      T h0[kRows];
      std::copy(states.begin() + (c * N + n) * kRows, states.begin() + (c * N + n + 1) * kRows, h0);
      {
        T hv[kRows];
        std::copy(h0, h0 + kRows, hv);
        chunk_recurrence(s, hv, len);
      }
      // dL/dh_t = gy_t C_t + a_{t+1} dL/dh_{t+1}
      T(&gh)[kRows][kChunk] = s.gh;
      T cv[kRows];
      for (int r = 0; r < kRows; ++r) cv[r] = carry[n * kRows + r];
      for (int64_t t = len - 1; t >= 0; --t) {
        for (int r = 0; r < kRows; ++r) {
          const T gt = s.gy[r][t] * Cn[t] + cv[r];
          cv[r] = s.a[r][t] * gt;
          gh[r][t] = gt;
        }
      }
      for (int r = 0; r < kRows; ++r) carry[n * kRows + r] = cv[r];
      for (int r = 0; r < R; ++r) {
        const int64_t o = p.row(b, d0 + r) + t0;
        const T* __restrict gy = s.gy[r];
        const T* __restrict ur = p.u + o;
        T* __restrict du = gr.du + o;
        const T An = p.A[(d0 + r) * N + n];
        const T* __restrict a = s.a[r];
        const T* __restrict hr = s.x[r];
        const T* __restrict dt = s.dt[r];
        const T* __restrict gt = gh[r];
        T* __restrict ddt = s.ddt[r];
        T* __restrict dBr = dBn;
        T* __restrict dCr = dCn;
        double acc = 0.0;
        // t = 0 reads the chunk-entry state; later steps read h_{t-1} from the buffer.
        {
          const T ga = gt[0] * h0[r] * a[0];  // dL/d(dt*A) at t = 0
          ddt[0] += ga * An + gt[0] * Bn[0] * ur[0];
          acc += static_cast<double>(ga * dt[0]);
        }
        for (int64_t t = 1; t < len; ++t) {
          const T ga = gt[t] * hr[t - 1] * a[t];
          ddt[t] += ga * An + gt[t] * Bn[t] * ur[t];
          acc += static_cast<double>(ga * dt[t]);
        }
        dA_acc[n * kRows + r] += acc;
        for (int64_t t = 0; t < len; ++t) {
          du[t] += gt[t] * dt[t] * Bn[t];
          dBr[t] += gt[t] * dt[t] * ur[t];
          dCr[t] += gy[t] * hr[t];
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      T* dd = gr.ddelta + p.row(b, d0 + r) + t0;
      const T* sg = s.g[r];
      const T* ddt = s.ddt[r];
      double acc = 0.0;
      for (int64_t t = 0; t < len; ++t) {
        dd[t] = ddt[t] * sg[t];
        acc += static_cast<double>(dd[t]);
      }
      dbias_acc[r] += acc;
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t d = d0 + r;
    for (int64_t n = 0; n < N; ++n) gr.dA[(b * p.dim + d) * N + n] = dA_acc[n * kRows + r];
    gr.dD[b * p.dim + d] = dD_acc[r];
    gr.dbias[b * p.dim + d] = dbias_acc[r];
  }
  delete &s;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias) {
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "selective_scan_cpu: float32 or float64 only");
  for (const at::Tensor* t : {&u, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dtype,
                "selective_scan_cpu: inputs must be contiguous CPU tensors of one dtype");
  }
  for (const at::Tensor* t : {&D, &bias}) {
    TORCH_CHECK(!t->defined() || (t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == dtype),
                "selective_scan_cpu: D and delta_bias must match u");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && A.dim() == 2 && A.size(0) == u.size(1) &&
                  B.dim() == 4 && C.sizes() == B.sizes() && B.size(0) == u.size(0) && B.size(2) == A.size(1) &&
                  B.size(3) == u.size(2) && u.size(1) % B.size(1) == 0,
              "selective_scan_cpu: bad shapes");
}

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const at::Tensor& D, const at::Tensor& bias, bool softplus) {
  return Problem<T>{u.data_ptr<T>(),
                    delta.data_ptr<T>(),
                    A.data_ptr<T>(),
                    B.data_ptr<T>(),
                    C.data_ptr<T>(),
                    D.defined() ? D.data_ptr<T>() : nullptr,
                    bias.defined() ? bias.data_ptr<T>() : nullptr,
                    softplus,
                    u.size(0),
                    u.size(1),
                    u.size(2),
                    A.size(1),
                    B.size(1)};
}

at::Tensor fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
               const at::Tensor& C, const c10::optional<at::Tensor>& D_opt,
               const c10::optional<at::Tensor>& bias_opt, bool softplus) {
  const at::Tensor D = D_opt.value_or(at::Tensor()), bias = bias_opt.value_or(at::Tensor());
  check_inputs(u, delta, A, B, C, D, bias);
  at::Tensor y = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A, B, C, D, bias, softplus);
    const int64_t bpg = p.blocks_per_group(), tasks = p.batch * p.G * bpg;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = i % bpg, g = (i / bpg) % p.G, b = i / (bpg * p.G);
        const int64_t d0 = g * p.per_group() + j * kRows;
        forward_block(p, yp, b, d0, static_cast<int>(std::min<int64_t>(kRows, p.per_group() - j * kRows)));
      }
    });
  });
  return y;
}

std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const c10::optional<at::Tensor>& D_opt,
                            const c10::optional<at::Tensor>& bias_opt, bool softplus, const at::Tensor& gy) {
  const at::Tensor D = D_opt.value_or(at::Tensor()), bias = bias_opt.value_or(at::Tensor());
  check_inputs(u, delta, A, B, C, D, bias);
  TORCH_CHECK(gy.sizes() == u.sizes() && gy.is_contiguous() && gy.scalar_type() == u.scalar_type(),
              "selective_scan_cpu: bad output gradient");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1), G = B.size(1);
  const int64_t bpg = ((dim / G) + kRows - 1) / kRows;
  // Split each (batch, group) over S tasks so that small batches still fill the threads;
  // each task owns a slice of the dB/dC partials, summed below.
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  const int64_t S = std::min(bpg, std::max<int64_t>(1, (want + batch * G - 1) / (batch * G)));
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  const auto f64 = u.options().dtype(at::kDouble);
  at::Tensor dA = at::zeros({batch, dim, N}, f64), dD = at::zeros({batch, dim}, f64),
             dbias = at::zeros({batch, dim}, f64);
  at::Tensor dB = at::zeros({batch, G, S, N, L}, u.options()), dC = at::zeros({batch, G, S, N, L}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    const Problem<scalar_t> p = make_problem<scalar_t>(u, delta, A, B, C, D, bias, softplus);
    const Grads<scalar_t> gr{gy.data_ptr<scalar_t>(),    du.data_ptr<scalar_t>(),  ddelta.data_ptr<scalar_t>(),
                             dA.data_ptr<double>(),      dD.data_ptr<double>(),    dbias.data_ptr<double>(),
                             dB.data_ptr<scalar_t>(),    dC.data_ptr<scalar_t>(),  S};
    at::parallel_for(0, batch * G * S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t s = i % S, g = (i / S) % G, b = i / (S * G);
        for (int64_t j = s * bpg / S; j < (s + 1) * bpg / S; ++j) {
          const int64_t d0 = g * p.per_group() + j * kRows;
          backward_block(p, gr, b, d0, static_cast<int>(std::min<int64_t>(kRows, p.per_group() - j * kRows)),
                         s);
        }
      }
    });
  });
  const auto dt = u.scalar_type();
  return {du,
          ddelta,
          dA.sum(0).to(dt),
          S == 1 ? dB.squeeze(2) : dB.sum(2),
          S == 1 ? dC.squeeze(2) : dC.sum(2),
          dD.sum(0).to(dt),
          dbias.sum(0).to(dt)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "selective scan forward (CPU)");
  m.def("bwd", &bwd, "selective scan backward (CPU): du, ddelta, dA, dB, dC, dD, ddelta_bias");
}
