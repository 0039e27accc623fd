// Stage 2: tile binning, front-to-back compositing and its hand-written backward pass (also front to back).
//
// Work is split over tiles (OpenMP, dynamic schedule: tile loads are very uneven).  Memory layout:
//  * every Gaussian's rasterisation inputs are first packed into one 64-byte record (mean, conic, opacity,
//    depth, pixel box, colour), so visiting a tile-list entry touches a single cache line;
//  * inside a tile the per-pixel state (transmittance, accumulators, ...) is a structure of arrays over
//    the tile's pixels (rows padded to a multiple of kLanes, plus kLanes of slack at the end);
//  * a Gaussian is applied only to the pixels of its visibility box: the bounding box of the ellipse where
//    opacity * exp(-sigma) >= 1/255 (from the conic and the opacity, plus a margin).  Outside it the
//    reference rule skips the pair anyway, so results are unchanged while small splats cost a few pixels
//    instead of a whole tile;
//  * the box is walked row by row in groups of kLanes pixels starting at its first column, with branch-free,
//    fixed-width inner loops that the compiler turns into SIMD (the exponential below is written to
//    vectorise); lanes past the box are masked.
// Per-thread gradient buffers (one per OpenMP thread, reduced at the end) avoid atomics in the backward.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "raster.h"

namespace recon_kernels {
namespace {

// exp(x) for float, vectorisable (Cephes-style range reduction + degree-6 polynomial, ~1 ulp).
#pragma omp declare simd notinbranch
inline float vexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // round(x / ln 2) with the 1.5 * 2^23 trick (exact for |x / ln 2| < 2^22)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float r2 = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = ((int32_t)n + 127) << 23;
  return y * scale.f;
}

// Half-extents (pixels) of the box outside which opacity * exp(-sigma) < 1/255; +inf when the conic is
// not positive definite (then sigma may be negative and the whole tile is visited).
inline void visibility_extent(float a, float b, float c, float o, double& ex, double& ey) {
  const double det = (double)a * c - (double)b * b;
  if (!(a > 0 && c > 0 && det > 0)) {
    ex = ey = std::numeric_limits<double>::infinity();
    return;
  }
  const double s = std::log(255.0 * (double)o);  // sigma above this -> alpha < 1/255
  if (!(s >= 0)) {
    ex = ey = -1.0;  // never visible
    return;
  }
  const double smax = s * 1.001 + 1e-3;  // margin for float rounding in the per-pixel sigma
  ex = std::sqrt(2.0 * smax * c / det) * 1.0001 + 0.01;
  ey = std::sqrt(2.0 * smax * a / det) * 1.0001 + 0.01;
}

// Pixel index range [lo, hi] whose centres (i + 0.5) lie within [m - e, m + e], clipped to [0, size - 1];
// empty (lo > hi) when e < 0 or m is not finite.
inline void pixel_range(float m, double e, int size, int32_t& lo, int32_t& hi) {
  lo = 1, hi = 0;
  if (!(e >= 0) || !std::isfinite(m)) return;
  const double l = std::ceil((double)m - e - 0.5), h = std::floor((double)m + e - 0.5);
  if (h < 0 || l > size - 1) return;
  lo = l < 0 ? 0 : (int32_t)l;
  hi = h > size - 1 ? size - 1 : (int32_t)h;
}

constexpr int kLanes = 8;  // pixels per inner SIMD group (one AVX2 register of floats)

struct alignas(64) Rec {
  float mx, my, a, b, c, o, z;
  int32_t x0, x1, y0, y1;  // inclusive visibility box in image pixels (x0 > x1: never visible)
  float col[kInlineColors];
};
static_assert(sizeof(Rec) == 4 * kRecordFloats, "record size");

struct TileGeom {
  int c, x0, y0, w, h;  // camera, top-left pixel, size (clipped at the image border)
};

inline TileGeom tile_geom(const RasterArgs& a, int64_t t) {
  const int64_t tpi = (int64_t)a.tiles_x() * a.tiles_y();
  TileGeom g;
  g.c = (int)(t / tpi);
  const int local = (int)(t % tpi);
  g.x0 = (local % a.tiles_x()) * a.tile_size;
  g.y0 = (local / a.tiles_x()) * a.tile_size;
  g.w = std::min(a.tile_size, a.width - g.x0);
  g.h = std::min(a.tile_size, a.height - g.y0);
  return g;
}

// The part of a Gaussian's box inside a tile, in tile-local pixel coordinates; false when empty.
inline bool clip_box(const Rec& r, const TileGeom& g, int& xa, int& xb, int& ya, int& yb) {
  xa = std::max(r.x0, g.x0) - g.x0, xb = std::min(r.x1, g.x0 + g.w - 1) - g.x0;
  ya = std::max(r.y0, g.y0) - g.y0, yb = std::min(r.y1, g.y0 + g.h - 1) - g.y0;
  return xa <= xb && ya <= yb;
}

inline int padded(int ts) { return (ts + kLanes - 1) / kLanes * kLanes; }

// Float depth -> unsigned key with the same order (negative depths included).
inline uint32_t depth_key(float z) {
  uint32_t u;
  std::memcpy(&u, &z, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Stable LSD radix sort of (key, value) pairs by key: ties keep their input order.
void radix_sort(std::vector<uint32_t>& keys, std::vector<int32_t>& vals) {
  const size_t n = keys.size();
  std::vector<uint32_t> k2(n);
  std::vector<int32_t> v2(n);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
    if (count[1] == n || n == 0) continue;  // all in bucket 0: this byte does not matter
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const size_t dst = count[(keys[i] >> shift) & 0xFF]++;
      k2[dst] = keys[i], v2[dst] = vals[i];
    }
    keys.swap(k2), vals.swap(v2);
  }
}

inline const Rec* as_recs(const float* p) { return reinterpret_cast<const Rec*>(p); }

// ---------------------------------------------------------------------------------------------------
// Forward: one tile.  DC > 0 is the number of colour channels known at compile time (the colour
// accumulation is then fused into the main loop); DC == 0 handles any D with a second pass.
// ---------------------------------------------------------------------------------------------------
struct FwdScratch {
  std::vector<float> T, acc_a, acc_z, w_buf, acc_c;
  std::vector<int32_t> last;
  // kLanes of slack after each array: a group of lanes starts at the box's first pixel, so its last lanes
  // may run past the row (and past the tile); they are masked off and only rewrite unchanged values.
  FwdScratch(int P, int D)
      : T(P + kLanes), acc_a(P + kLanes), acc_z(P + kLanes), w_buf(P + kLanes), acc_c((size_t)D * P + kLanes),
        last(P + kLanes) {}
};

template <int DC>
void forward_tile(const RasterArgs& a, int64_t t, const Rec* recs, const float* colors, const int64_t* tile_offsets,
                  const int32_t* tile_ids, float* out_colors, float* out_alphas, float* out_depths,
                  int32_t* last_count, FwdScratch& st) {
  const int ts = a.tile_size, S = padded(ts), P = S * ts;
  const int D = DC > 0 ? DC : a.D;
  const TileGeom g = tile_geom(a, t);
  float* __restrict T = st.T.data();
  float* __restrict acc_a = st.acc_a.data();
  float* __restrict acc_z = st.acc_z.data();
  float* __restrict w_buf = st.w_buf.data();
  float* __restrict acc_c = st.acc_c.data();
  int32_t* __restrict last = st.last.data();
  // T = 0 marks pixels outside the image and pixels that have stopped (T never reaches 0 otherwise).
  for (int p = 0; p < P; ++p) {
    const bool inside = (p % S) < g.w && (p / S) < g.h;
    T[p] = inside ? 1.f : 0.f, acc_a[p] = 0.f, acc_z[p] = 0.f, w_buf[p] = 0.f, last[p] = 0;
  }
  std::fill(st.acc_c.begin(), st.acc_c.end(), 0.f);
  int alive = g.w * g.h;
  const int64_t start = tile_offsets[t], end = tile_offsets[t + 1];
  for (int64_t k = start; k < end && alive > 0; ++k) {
    const int64_t id = tile_ids[k];
    const Rec& r = recs[id];
    int xa, xb, ya, yb;
    if (!clip_box(r, g, xa, xb, ya, yb)) continue;
    const float mx = r.mx, my = r.my, ca = r.a, cb = r.b, cc = r.c, o = r.o, z = r.z;
    const float* col = D <= kInlineColors ? r.col : colors + g.c * a.color_cstride + (id % a.N) * D;
    float cl[DC > 0 ? DC : 1];
    for (int d = 0; d < DC; ++d) cl[d] = col[d];
    const int32_t kk = (int32_t)(k - start + 1);
    for (int ly = ya; ly <= yb; ++ly) {
      const float dy = my - ((float)(g.y0 + ly) + 0.5f);
      for (int g0 = xa; g0 <= xb; g0 += kLanes) {  // groups start at the box
        const int p0 = ly * S + g0;
        int halts = 0;
#pragma omp simd reduction(+ : halts)
        for (int l = 0; l < kLanes; ++l) {
          const int p = p0 + l, lx = g0 + l;
          const float dx = mx - ((float)(g.x0 + lx) + 0.5f);
          const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
          const float raw = o * vexp(-sigma);
          const float al = raw < kAlphaMax ? raw : kAlphaMax;
          const float Tp = T[p];
          const bool contrib = lx >= xa && lx <= xb && Tp > 0.f && sigma >= 0.f && al >= kAlphaMin;
          const float nT = Tp * (1.f - al);
          const bool halt = contrib && nT <= kTMin;
          const bool add = contrib && !halt;
          const float w = add ? al * Tp : 0.f;
          T[p] = add ? nT : (halt ? 0.f : Tp);
          last[p] = add ? kk : last[p];
          acc_a[p] += w;
          acc_z[p] += w * z;
          if constexpr (DC > 0) {
            for (int d = 0; d < DC; ++d) acc_c[d * P + p] += w * cl[d];
          } else {
            w_buf[p] = w;
          }
          halts += halt ? 1 : 0;
        }
        if constexpr (DC == 0) {
          for (int d = 0; d < D; ++d) {
            const float cd = col[d];
            float* acc = acc_c + (size_t)d * P + p0;
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) acc[l] += w_buf[p0 + l] * cd;
          }
        }
        alive -= halts;
      }
    }
  }
  // Write the tile back into the (C, H, W, ...) images.
  for (int ly = 0; ly < g.h; ++ly) {
    const int64_t pix0 = ((int64_t)g.c * a.height + g.y0 + ly) * a.width + g.x0;
    for (int lx = 0; lx < g.w; ++lx) {
      const int p = ly * S + lx;
      const int64_t pix = pix0 + lx;
      out_alphas[pix] = acc_a[p];
      out_depths[pix] = acc_z[p];
      last_count[pix] = last[p];
      for (int d = 0; d < D; ++d) out_colors[pix * D + d] = acc_c[(size_t)d * P + p];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward: one tile, front to back like the forward pass, so the transmittance T_i in front of each
// Gaussian is recomputed with exactly the forward's arithmetic (no division chain).  With f_i = v_rgb . c_i
// + v_depth z_i + v_alpha the incoming gradient of pixel value i and F = sum_i w_i f_i (from the forward's
// outputs), dL/dalpha_i = T_i f_i - (F - sum_{j <= i} w_j f_j) / (1 - alpha_i); the running sum and F
// are kept in double so that their difference (the part behind Gaussian i) stays accurate.
// ---------------------------------------------------------------------------------------------------
struct BwdScratch {
  std::vector<double> F, Psum;
  std::vector<float> T, vA, vZ, w_buf, vC;
  std::vector<int32_t> last;
  std::vector<float> gcol;
  // kLanes of slack after each array, as in FwdScratch.
  BwdScratch(int P, int D)
      : F(P + kLanes), Psum(P + kLanes), T(P + kLanes), vA(P + kLanes), vZ(P + kLanes), w_buf(P + kLanes),
        vC((size_t)D * P + kLanes), last(P + kLanes), gcol(D) {}
};

template <int DC>
void backward_tile(const RasterArgs& a, int64_t t, const Rec* recs, const float* colors,
                   const int64_t* tile_offsets, const int32_t* tile_ids, const float* out_colors,
                   const float* out_alphas, const float* out_depths, const int32_t* last_count,
                   const float* v_colors, const float* v_alphas, const float* v_depths, float* gbuf, int KG,
                   BwdScratch& st) {
  const int ts = a.tile_size, S = padded(ts), P = S * ts;
  const int D = DC > 0 ? DC : a.D;
  const TileGeom g = tile_geom(a, t);
  double* __restrict Fb = st.F.data();
  double* __restrict Pb = st.Psum.data();
  float* __restrict T = st.T.data();
  float* __restrict vA = st.vA.data();
  float* __restrict vZ = st.vZ.data();
  float* __restrict w_buf = st.w_buf.data();
  float* __restrict vC = st.vC.data();
  int32_t* __restrict last = st.last.data();
  // Load the tile's incoming gradients (zeros outside the image).  Every element is written exactly once:
  // (GCC 12 -O3 loop distribution gave wrong results for a zero-then-overwrite form of this loop.)
  int32_t kmax = 0;
  for (int p = 0; p < P; ++p) {
    const int lx = p % S, ly = p / S;
    const bool inside = lx < g.w && ly < g.h;
    const int64_t pix = inside ? ((int64_t)g.c * a.height + g.y0 + ly) * a.width + g.x0 + lx : 0;
    T[p] = 1.f, Pb[p] = 0.0, w_buf[p] = 0.f;
    last[p] = inside ? last_count[pix] : 0;
    vA[p] = inside ? v_alphas[pix] : 0.f;
    vZ[p] = inside ? v_depths[pix] : 0.f;
    double F = inside ? (double)v_alphas[pix] * out_alphas[pix] + (double)v_depths[pix] * out_depths[pix] : 0.0;
    for (int d = 0; d < D; ++d) {
      vC[(size_t)d * P + p] = inside ? v_colors[pix * D + d] : 0.f;
      F += inside ? (double)v_colors[pix * D + d] * out_colors[pix * D + d] : 0.0;
    }
    Fb[p] = F;
    kmax = std::max(kmax, last[p]);
  }
  const int64_t start = tile_offsets[t];
  for (int64_t k = start; k < start + kmax; ++k) {
    const int64_t id = tile_ids[k];
    const Rec& r = recs[id];
    int xa, xb, ya, yb;
    if (!clip_box(r, g, xa, xb, ya, yb)) continue;
    const float mx = r.mx, my = r.my, ca = r.a, cb = r.b, cc = r.c, o = r.o, z = r.z;
    const float* col = D <= kInlineColors ? r.col : colors + g.c * a.color_cstride + (id % a.N) * D;
    float cl[DC > 0 ? DC : 1];
    for (int d = 0; d < DC; ++d) cl[d] = col[d];
    const int32_t kk = (int32_t)(k - start);
    // Per-lane partial sums, reduced once per (tile, Gaussian).
    float s_mx[kLanes] = {}, s_my[kLanes] = {}, s_a[kLanes] = {}, s_b[kLanes] = {}, s_c[kLanes] = {};
    // Colour sums in separate named arrays (fused path: DC <= 3): GCC 12 at -O3 mis-compiled a 2D/strided
    // per-lane array here (found by the colour-vs-depth gradient identity).
    float s_o[kLanes] = {}, s_z[kLanes] = {}, s_c0[kLanes] = {}, s_c1[kLanes] = {}, s_c2[kLanes] = {};
    static_assert(DC <= 3, "fused colour path handles up to 3 channels");
    if constexpr (DC == 0) std::fill(st.gcol.begin(), st.gcol.end(), 0.f);
    for (int ly = ya; ly <= yb; ++ly) {
      const float dy = my - ((float)(g.y0 + ly) + 0.5f);
      for (int g0 = xa; g0 <= xb; g0 += kLanes) {  // groups start at the box
        const int p0 = ly * S + g0;
        float cd_l[kLanes] = {};
        if constexpr (DC == 0) {
          for (int d = 0; d < D; ++d) {
            const float cd = col[d];
            const float* vc = vC + (size_t)d * P + p0;
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) cd_l[l] += cd * vc[l];
          }
        }
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) {
          const int p = p0 + l, lx = g0 + l;
          const float dx = mx - ((float)(g.x0 + lx) + 0.5f);
          const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
          const float gexp = vexp(-sigma);
          const float raw = o * gexp;
          const float al = raw < kAlphaMax ? raw : kAlphaMax;
          const bool contrib = lx >= xa && lx <= xb && kk < last[p] && sigma >= 0.f && al >= kAlphaMin;
          const float Tp = T[p];
          const float om = 1.f - al;
          const float w = contrib ? al * Tp : 0.f;
          float f = z * vZ[p] + vA[p];
          if constexpr (DC > 0) {
            for (int d = 0; d < DC; ++d) f += cl[d] * vC[d * P + p];
          } else {
            f += cd_l[l];
          }
          const double Pn = Pb[p] + (double)(w * f);
          const float behind = (float)(Fb[p] - Pn);
          // Lanes the Gaussian does not touch divide by 1 (branch-free, so the loop vectorises).
          const float dal = Tp * f - behind / (contrib ? om : 1.f);
          Pb[p] = Pn;
          T[p] = contrib ? Tp * om : Tp;
          const float graw = (contrib && raw <= kAlphaMax) ? dal : 0.f;
          s_o[l] += graw * gexp;
          const float gsig = -graw * raw;
          s_mx[l] += gsig * (ca * dx + cb * dy);
          s_my[l] += gsig * (cb * dx + cc * dy);
          s_a[l] += 0.5f * gsig * dx * dx;
          s_b[l] += gsig * dx * dy;
          s_c[l] += 0.5f * gsig * dy * dy;
          s_z[l] += w * vZ[p];
          if constexpr (DC > 0) {
            if constexpr (DC >= 1) s_c0[l] += w * vC[p];
            if constexpr (DC >= 2) s_c1[l] += w * vC[P + p];
            if constexpr (DC >= 3) s_c2[l] += w * vC[2 * P + p];
          } else {
            w_buf[p] = w;
          }
        }
        if constexpr (DC == 0) {
          for (int d = 0; d < D; ++d) {
            const float* vc = vC + (size_t)d * P + p0;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int l = 0; l < kLanes; ++l) s += w_buf[p0 + l] * vc[l];
            st.gcol[d] += s;
          }
        }
      }
    }
    float* gg = gbuf + (size_t)id * KG;
    for (int l = 0; l < kLanes; ++l) {
      gg[0] += s_mx[l], gg[1] += s_my[l], gg[2] += s_a[l], gg[3] += s_b[l], gg[4] += s_c[l];
      gg[5] += s_o[l], gg[6] += s_z[l];
    }
    if constexpr (DC > 0) {
      for (int l = 0; l < kLanes; ++l) {
        if constexpr (DC >= 1) gg[7] += s_c0[l];
        if constexpr (DC >= 2) gg[8] += s_c1[l];
        if constexpr (DC >= 3) gg[9] += s_c2[l];
      }
    } else {
      for (int d = 0; d < D; ++d) gg[7 + d] += st.gcol[d];
    }
  }
}

}  // namespace

void pack_gaussians(const RasterArgs& a, const float* means2d, const float* conics, const float* opacities,
                    const float* colors, const float* depths, float* records, int n_threads) {
  const int64_t CN = a.C * a.N;
  Rec* recs = reinterpret_cast<Rec*>(records);
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1024)
  for (int64_t i = 0; i < CN; ++i) {
    const int64_t c = i / a.N, n = i % a.N;
    Rec& r = recs[i];
    r.mx = means2d[2 * i], r.my = means2d[2 * i + 1];
    r.a = conics[3 * i], r.b = conics[3 * i + 1], r.c = conics[3 * i + 2];
    r.o = opacities[c * a.opac_cstride + n];
    r.z = depths[i];
    double ex, ey;
    visibility_extent(r.a, r.b, r.c, r.o, ex, ey);
    pixel_range(r.mx, ex, a.width, r.x0, r.x1);
    pixel_range(r.my, ey, a.height, r.y0, r.y1);
    const float* col = colors + c * a.color_cstride + n * a.D;
    for (int d = 0; d < kInlineColors; ++d) r.col[d] = d < a.D ? col[d] : 0.f;
  }
}

void bin_gaussians(const RasterArgs& a, const float* records, const int32_t* radii,
                   std::vector<int64_t>& tile_offsets, std::vector<int32_t>& tile_ids, int n_threads) {
  const Rec* recs = as_recs(records);
  const int64_t C = a.C, N = a.N;
  const int tx = a.tiles_x(), ty = a.tiles_y();
  const int64_t tpi = (int64_t)tx * ty;
  const int ts = a.tile_size;
  std::vector<int64_t> counts(a.n_tiles() + 1, 0);
  std::vector<std::vector<int32_t>> order(C);
  std::vector<std::vector<int32_t>> rects(C);  // 4 ints per ordered Gaussian

#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < C; ++c) {
    std::vector<uint32_t> keys;
    std::vector<int32_t>& ord = order[c];
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = c * N + n;
      // Culled Gaussians, and those that can never reach alpha >= 1/255 anywhere, are left out.
      if (radii[2 * i] > 0 && radii[2 * i + 1] > 0 && recs[i].x0 <= recs[i].x1 && recs[i].y0 <= recs[i].y1) {
        keys.push_back(depth_key(recs[i].z));
        ord.push_back((int32_t)n);
      }
    }
    radix_sort(keys, ord);  // stable: equal depths keep index order, as torch_ref's stable argsort
    std::vector<int32_t>& rc = rects[c];
    rc.resize(4 * ord.size());
    int64_t* cnt = counts.data() + c * tpi;
    for (size_t k = 0; k < ord.size(); ++k) {
      const int64_t i = c * N + ord[k];
      const Rec& r = recs[i];
      // The tiles of torch_ref._bin_gaussians (radius box, float64 arithmetic) ...
      const double mx = r.mx, my = r.my, rx = radii[2 * i], ry = radii[2 * i + 1];
      int x_lo = (int)std::min<double>(std::max(std::floor((mx - rx) / ts), 0.0), tx);
      int y_lo = (int)std::min<double>(std::max(std::floor((my - ry) / ts), 0.0), ty);
      int x_hi = (int)std::min<double>(std::max(std::ceil((mx + rx) / ts), 0.0), tx);
      int y_hi = (int)std::min<double>(std::max(std::ceil((my + ry) / ts), 0.0), ty);
      // ... restricted to those the visibility box touches (the others would skip every pixel).
      x_lo = std::max(x_lo, r.x0 / ts), x_hi = std::min(x_hi, r.x1 / ts + 1);
      y_lo = std::max(y_lo, r.y0 / ts), y_hi = std::min(y_hi, r.y1 / ts + 1);
      if (x_lo >= x_hi || y_lo >= y_hi) x_hi = x_lo, y_hi = y_lo;
      rc[4 * k] = x_lo, rc[4 * k + 1] = x_hi, rc[4 * k + 2] = y_lo, rc[4 * k + 3] = y_hi;
      for (int yy = y_lo; yy < y_hi; ++yy)
        for (int xx = x_lo; xx < x_hi; ++xx) ++cnt[yy * tx + xx];
    }
  }
  tile_offsets.assign(a.n_tiles() + 1, 0);
  for (int64_t t = 0; t < a.n_tiles(); ++t) tile_offsets[t + 1] = tile_offsets[t] + counts[t];
  tile_ids.resize(tile_offsets.back());
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < C; ++c) {
    std::vector<int64_t> cursor(tile_offsets.begin() + c * tpi, tile_offsets.begin() + (c + 1) * tpi);
    const std::vector<int32_t>& ord = order[c];
    const std::vector<int32_t>& rc = rects[c];
    for (size_t k = 0; k < ord.size(); ++k) {
      const int32_t id = (int32_t)(c * N + ord[k]);
      for (int yy = rc[4 * k + 2]; yy < rc[4 * k + 3]; ++yy)
        for (int xx = rc[4 * k]; xx < rc[4 * k + 1]; ++xx) tile_ids[cursor[yy * tx + xx]++] = id;
    }
  }
}

void rasterize_forward(const RasterArgs& a, const float* records, const float* colors, const int64_t* tile_offsets,
                       const int32_t* tile_ids, float* out_colors, float* out_alphas, float* out_depths,
                       int32_t* last_count, int n_threads) {
  const int P = padded(a.tile_size) * a.tile_size;
  const Rec* recs = as_recs(records);
#pragma omp parallel num_threads(n_threads)
  {
    FwdScratch st(P, a.D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.n_tiles(); ++t) {
      if (a.D == 3)
        forward_tile<3>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count, st);
      else if (a.D == 1)
        forward_tile<1>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count, st);
      else
        forward_tile<0>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count, st);
    }
  }
}

void rasterize_backward(const RasterArgs& a, const float* records, const float* colors,
                        const int64_t* tile_offsets, const int32_t* tile_ids, const float* out_colors,
                        const float* out_alphas, const float* out_depths, const int32_t* last_count,
                        const float* v_colors, const float* v_alphas, const float* v_depths, float* g_means2d,
                        float* g_conics, float* g_opacities, float* g_colors, float* g_depths, int n_threads) {
  const int P = padded(a.tile_size) * a.tile_size, D = a.D;
  const int64_t C = a.C, N = a.N, CN = C * N;
  const Rec* recs = as_recs(records);
  // Per-thread gradient records per flat id: means2d (2), conic (3), opacity, depth, colour (D); padded
  // to whole cache lines.  Threads own whole tiles, so nothing is shared until the final reduction.
  const int KG = (7 + D + 15) / 16 * 16;
  const int T_threads = std::max(1, n_threads);
  std::vector<std::vector<float>> bufs(T_threads);

#pragma omp parallel num_threads(T_threads)
  {
    std::vector<float>& gbuf = bufs[omp_get_thread_num()];
    gbuf.assign((size_t)CN * KG, 0.f);
    BwdScratch st(P, D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.n_tiles(); ++t) {
      if (D == 3)
        backward_tile<3>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count,
                         v_colors, v_alphas, v_depths, gbuf.data(), KG, st);
      else if (D == 1)
        backward_tile<1>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count,
                         v_colors, v_alphas, v_depths, gbuf.data(), KG, st);
      else
        backward_tile<0>(a, t, recs, colors, tile_offsets, tile_ids, out_colors, out_alphas, out_depths, last_count,
                         v_colors, v_alphas, v_depths, gbuf.data(), KG, st);
    }
  }

  // Reduce the per-thread buffers into the outputs (shared opacities/colours sum over cameras).
  const bool shared_o = a.opac_cstride == 0, shared_c = a.color_cstride == 0;
  if (shared_o) std::fill(g_opacities, g_opacities + N, 0.f);
  if (shared_c) std::fill(g_colors, g_colors + N * D, 0.f);
#pragma omp parallel for num_threads(T_threads) schedule(dynamic, 1024)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = c * N + n;
      float acc[64];
      float* sum = KG <= 64 ? acc : nullptr;
      std::vector<float> big;
      if (!sum) {
        big.assign(KG, 0.f);
        sum = big.data();
      }
      for (int k = 0; k < KG; ++k) sum[k] = 0.f;
      for (int th = 0; th < T_threads; ++th) {
        if (bufs[th].empty()) continue;  // the runtime gave us fewer threads than asked for
        const float* src = bufs[th].data() + (size_t)i * KG;
        for (int k = 0; k < KG; ++k) sum[k] += src[k];
      }
      g_means2d[2 * i] = sum[0], g_means2d[2 * i + 1] = sum[1];
      g_conics[3 * i] = sum[2], g_conics[3 * i + 1] = sum[3], g_conics[3 * i + 2] = sum[4];
      g_depths[i] = sum[6];
      if (shared_o) g_opacities[n] += sum[5];
      else g_opacities[i] = sum[5];
      float* gcd = g_colors + (shared_c ? n * D : i * D);
      for (int d = 0; d < D; ++d) {
        if (shared_c) gcd[d] += sum[7 + d];
        else gcd[d] = sum[7 + d];
      }
    }
  }
}

}  // namespace recon_kernels
