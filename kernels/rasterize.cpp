// Stage 2: tile binning, front-to-back compositing and its back-to-front backward pass.
//
// Work is split over tiles (OpenMP, dynamic schedule: tile loads are very uneven).  Inside a tile the
// per-pixel state lives in small structure-of-arrays buffers (transmittance, accumulators, ...) indexed by
// the pixel's position in the tile, and every Gaussian is applied to the pixels of its exact visibility box
// only: the ellipse where opacity * exp(-sigma) >= 1/255, computed from the conic and the opacity (plus a
// margin).  Outside that box the reference rule would skip the pair anyway, so results are unchanged while
// small splats cost a few pixels instead of a whole tile.  The inner loops over a row of pixels are
// branch-free so the compiler vectorises them (including the exponential below).
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
inline void visibility_extent(float a, float b, float c, float o, float& ex, float& ey) {
  const double det = (double)a * c - (double)b * b;
  if (!(a > 0 && c > 0 && det > 0)) {
    ex = ey = std::numeric_limits<float>::infinity();
    return;
  }
  const double s = std::log(255.0 * (double)o);  // sigma above this -> alpha < 1/255
  if (!(s >= 0)) {
    ex = ey = -1.f;  // never visible
    return;
  }
  const double smax = s * 1.001 + 1e-3;  // margin for float rounding in the per-pixel sigma
  ex = (float)(std::sqrt(2.0 * smax * c / det) * 1.0001 + 0.01);
  ey = (float)(std::sqrt(2.0 * smax * a / det) * 1.0001 + 0.01);
}

// Pixel index range [lo, hi] whose centres (i + 0.5) lie within [m - e, m + e], clipped to [lo0, hi0].
inline void pixel_range(float m, float e, int lo0, int hi0, int& lo, int& hi) {
  if (!(e >= 0)) {
    lo = 1, hi = 0;
    return;
  }
  const double l = std::ceil((double)m - e - 0.5), h = std::floor((double)m + e - 0.5);
  lo = l < lo0 ? lo0 : (int)std::min<double>(l, hi0 + 1);
  hi = h > hi0 ? hi0 : (int)std::max<double>(h, lo0 - 1);
}

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

// Per flat Gaussian id: visibility half-extents (computed once, shared by all tiles).
std::vector<float> extents(const RasterArgs& a, const float* conics, const float* opacities, int n_threads) {
  const int64_t CN = a.C * a.N;
  std::vector<float> ext(2 * CN);
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t i = 0; i < CN; ++i) {
    const int64_t c = i / a.N, n = i % a.N;
    const float* q = conics + 3 * i;
    visibility_extent(q[0], q[1], q[2], opacities[c * a.opac_cstride + n], ext[2 * i], ext[2 * i + 1]);
  }
  return ext;
}

}  // namespace

void bin_gaussians(const RasterArgs& a, const float* means2d, const float* depths, const int32_t* radii,
                   const float* opacities, std::vector<int64_t>& tile_offsets, std::vector<int32_t>& tile_ids) {
  const int64_t C = a.C, N = a.N;
  const int tx = a.tiles_x(), ty = a.tiles_y();
  const int64_t tpi = (int64_t)tx * ty;
  const double ts = a.tile_size;
  std::vector<int64_t> counts(a.n_tiles() + 1, 0);
  std::vector<std::vector<int32_t>> order(C);
  std::vector<std::vector<int32_t>> rects(C);  // 4 ints per ordered Gaussian

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < C; ++c) {
    std::vector<int32_t>& ord = order[c];
    const float* dep = depths + c * N;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = c * N + n;
      // Gaussians that can never reach alpha >= 1/255 are left out; they would be skipped per pixel.
      if (radii[2 * i] > 0 && radii[2 * i + 1] > 0 && opacities[c * a.opac_cstride + n] >= kAlphaMin)
        ord.push_back((int32_t)n);
    }
    std::stable_sort(ord.begin(), ord.end(), [dep](int32_t u, int32_t v) { return dep[u] < dep[v]; });
    std::vector<int32_t>& rc = rects[c];
    rc.resize(4 * ord.size());
    int64_t* cnt = counts.data() + c * tpi;
    for (size_t k = 0; k < ord.size(); ++k) {
      const int64_t i = c * N + ord[k];
      // Same rule and arithmetic (float64) as torch_ref._bin_gaussians.
      const double mx = means2d[2 * i], my = means2d[2 * i + 1];
      const double rx = radii[2 * i], ry = radii[2 * i + 1];
      const int x_lo = (int)std::min<double>(std::max(std::floor((mx - rx) / ts), 0.0), tx);
      const int y_lo = (int)std::min<double>(std::max(std::floor((my - ry) / ts), 0.0), ty);
      const int x_hi = (int)std::min<double>(std::max(std::ceil((mx + rx) / ts), 0.0), tx);
      const int y_hi = (int)std::min<double>(std::max(std::ceil((my + ry) / ts), 0.0), ty);
      rc[4 * k] = x_lo, rc[4 * k + 1] = x_hi, rc[4 * k + 2] = y_lo, rc[4 * k + 3] = y_hi;
      for (int yy = y_lo; yy < y_hi; ++yy)
        for (int xx = x_lo; xx < x_hi; ++xx) ++cnt[yy * tx + xx];
    }
  }
  tile_offsets.assign(a.n_tiles() + 1, 0);
  for (int64_t t = 0; t < a.n_tiles(); ++t) tile_offsets[t + 1] = tile_offsets[t] + counts[t];
  tile_ids.resize(tile_offsets.back());
#pragma omp parallel for schedule(dynamic, 1)
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

void rasterize_forward(const RasterArgs& a, const float* means2d, const float* conics, const float* opacities,
                       const float* colors, const float* depths, const int64_t* tile_offsets,
                       const int32_t* tile_ids, float* out_colors, float* out_alphas, float* out_depths,
                       float* final_T, int32_t* last_count, int n_threads) {
  const int ts = a.tile_size, P = ts * ts, D = a.D;
  const int64_t N = a.N;
  const std::vector<float> ext = extents(a, conics, opacities, n_threads);

#pragma omp parallel num_threads(n_threads)
  {
    // Per-thread tile state, structure of arrays over the tile's pixels.
    std::vector<float> T(P), act(P), acc_a(P), acc_z(P), w_buf(P), acc_c((size_t)D * P);
    std::vector<int32_t> last(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.n_tiles(); ++t) {
      const TileGeom g = tile_geom(a, t);
      for (int p = 0; p < P; ++p) {
        const bool inside = (p % ts) < g.w && (p / ts) < g.h;
        T[p] = 1.f, act[p] = inside ? 1.f : 0.f, acc_a[p] = 0.f, acc_z[p] = 0.f, last[p] = 0;
      }
      std::fill(acc_c.begin(), acc_c.end(), 0.f);
      int alive = g.w * g.h;
      const int64_t start = tile_offsets[t], end = tile_offsets[t + 1];
      for (int64_t k = start; k < end && alive > 0; ++k) {
        const int64_t id = tile_ids[k];
        const int64_t n = id % N;
        int xa, xb, ya, yb;
        const float mx = means2d[2 * id], my = means2d[2 * id + 1];
        pixel_range(mx, ext[2 * id], g.x0, g.x0 + g.w - 1, xa, xb);
        pixel_range(my, ext[2 * id + 1], g.y0, g.y0 + g.h - 1, ya, yb);
        if (xa > xb || ya > yb) continue;
        const float ca = conics[3 * id], cb = conics[3 * id + 1], cc = conics[3 * id + 2];
        const float o = opacities[g.c * a.opac_cstride + n];
        const float z = depths[id];
        const float* col = colors + g.c * a.color_cstride + n * D;
        const int32_t kk = (int32_t)(k - start + 1);
        for (int y = ya; y <= yb; ++y) {
          const int row = (y - g.y0) * ts - g.x0;
          const float dy = my - ((float)y + 0.5f);
          int halts = 0;
#pragma omp simd reduction(+ : halts)
          for (int x = xa; x <= xb; ++x) {
            const int p = row + x;
            const float dx = mx - ((float)x + 0.5f);
            const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
            const float raw = o * vexp(-sigma);
            const float al = raw < kAlphaMax ? raw : kAlphaMax;
            const float Tp = T[p];
            const bool contrib = act[p] > 0.f && sigma >= 0.f && al >= kAlphaMin;
            const float nT = Tp * (1.f - al);
            const bool halt = contrib && nT <= kTMin;
            const bool add = contrib && !halt;
            const float w = add ? al * Tp : 0.f;
            w_buf[p] = w;
            T[p] = add ? nT : Tp;
            act[p] = halt ? 0.f : act[p];
            last[p] = add ? kk : last[p];
            acc_a[p] += w;
            acc_z[p] += w * z;
            halts += halt ? 1 : 0;
          }
          for (int d = 0; d < D; ++d) {
            const float cd = col[d];
            float* acc = acc_c.data() + (size_t)d * P;
#pragma omp simd
            for (int x = xa; x <= xb; ++x) acc[row + x] += w_buf[row + x] * cd;
          }
          alive -= halts;
        }
      }
      // Write the tile back into the (C, H, W, ...) images.
      for (int ly = 0; ly < g.h; ++ly) {
        const int64_t pix0 = ((int64_t)g.c * a.height + g.y0 + ly) * a.width + g.x0;
        for (int lx = 0; lx < g.w; ++lx) {
          const int p = ly * ts + lx;
          const int64_t pix = pix0 + lx;
          out_alphas[pix] = acc_a[p];
          out_depths[pix] = acc_z[p];
          final_T[pix] = T[p];
          last_count[pix] = last[p];
          for (int d = 0; d < D; ++d) out_colors[pix * D + d] = acc_c[(size_t)d * P + p];
        }
      }
    }
  }
}

void rasterize_backward(const RasterArgs& a, const float* means2d, const float* conics, const float* opacities,
                        const float* colors, const float* depths, const int64_t* tile_offsets,
                        const int32_t* tile_ids, const float* final_T, const int32_t* last_count,
                        const float* v_colors, const float* v_alphas, const float* v_depths, float* g_means2d,
                        float* g_conics, float* g_opacities, float* g_colors, float* g_depths, int n_threads) {
  const int ts = a.tile_size, P = ts * ts, D = a.D;
  const int64_t C = a.C, N = a.N, CN = C * N;
  // Per flat id: means2d (2), conic (3), opacity, depth, colour (D).
  const int KG = 7 + D;
  const std::vector<float> ext = extents(a, conics, opacities, n_threads);
  const int T_threads = std::max(1, n_threads);
  std::vector<std::vector<float>> bufs(T_threads);

#pragma omp parallel num_threads(T_threads)
  {
    std::vector<float>& gbuf = bufs[omp_get_thread_num()];
    gbuf.assign((size_t)CN * KG, 0.f);
    // Per-pixel state; transmittance and the suffix sum in double: T is recovered by dividing by
    // (1 - alpha) back to front, which must not accumulate rounding over hundreds of Gaussians.
    std::vector<double> Tb(P), S(P);
    std::vector<float> vA(P), vZ(P), cdot(P), w_buf(P), vC((size_t)D * P);
    std::vector<int32_t> last(P);
    std::vector<float> gcol(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.n_tiles(); ++t) {
      const TileGeom g = tile_geom(a, t);
      int32_t kmax = 0;
      for (int p = 0; p < P; ++p) {
        const int lx = p % ts, ly = p / ts;
        if (lx < g.w && ly < g.h) {
          const int64_t pix = ((int64_t)g.c * a.height + g.y0 + ly) * a.width + g.x0 + lx;
          Tb[p] = final_T[pix], last[p] = last_count[pix], vA[p] = v_alphas[pix], vZ[p] = v_depths[pix];
          for (int d = 0; d < D; ++d) vC[(size_t)d * P + p] = v_colors[pix * D + d];
          kmax = std::max(kmax, last[p]);
        } else {
          Tb[p] = 1.0, last[p] = 0, vA[p] = 0.f, vZ[p] = 0.f;
          for (int d = 0; d < D; ++d) vC[(size_t)d * P + p] = 0.f;
        }
        S[p] = 0.0;
      }
      const int64_t start = tile_offsets[t];
      for (int64_t k = start + kmax - 1; k >= start; --k) {
        const int64_t id = tile_ids[k];
        const int64_t n = id % N;
        int xa, xb, ya, yb;
        const float mx = means2d[2 * id], my = means2d[2 * id + 1];
        pixel_range(mx, ext[2 * id], g.x0, g.x0 + g.w - 1, xa, xb);
        pixel_range(my, ext[2 * id + 1], g.y0, g.y0 + g.h - 1, ya, yb);
        if (xa > xb || ya > yb) continue;
        const float ca = conics[3 * id], cb = conics[3 * id + 1], cc = conics[3 * id + 2];
        const float o = opacities[g.c * a.opac_cstride + n];
        const float z = depths[id];
        const float* col = colors + g.c * a.color_cstride + n * D;
        const int32_t kk = (int32_t)(k - start);
        float gmx = 0, gmy = 0, ga = 0, gb = 0, gc = 0, go = 0, gz = 0;
        std::fill(gcol.begin(), gcol.end(), 0.f);
        for (int y = ya; y <= yb; ++y) {
          const int row = (y - g.y0) * ts - g.x0;
          const float dy = my - ((float)y + 0.5f);
          for (int x = xa; x <= xb; ++x) cdot[row + x] = 0.f;
          for (int d = 0; d < D; ++d) {
            const float cd = col[d];
            const float* vc = vC.data() + (size_t)d * P;
#pragma omp simd
            for (int x = xa; x <= xb; ++x) cdot[row + x] += cd * vc[row + x];
          }
#pragma omp simd reduction(+ : gmx, gmy, ga, gb, gc, go, gz)
          for (int x = xa; x <= xb; ++x) {
            const int p = row + x;
            const float dx = mx - ((float)x + 0.5f);
            const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
            const float gexp = vexp(-sigma);
            const float raw = o * gexp;
            const float al = raw < kAlphaMax ? raw : kAlphaMax;
            const bool contrib = kk < last[p] && sigma >= 0.f && al >= kAlphaMin;
            const double om = 1.0 - (double)al;
            const double Ti = contrib ? Tb[p] / om : Tb[p];
            const float w = contrib ? (float)(al * Ti) : 0.f;
            const float f = cdot[p] + z * vZ[p] + vA[p];
            const double dal = Ti * f - S[p] / om;
            S[p] += contrib ? (double)w * f : 0.0;
            Tb[p] = Ti;
            const float graw = (contrib && raw <= kAlphaMax) ? (float)dal : 0.f;
            go += graw * gexp;
            const float gsig = -graw * raw;
            gmx += gsig * (ca * dx + cb * dy);
            gmy += gsig * (cb * dx + cc * dy);
            ga += 0.5f * gsig * dx * dx;
            gb += gsig * dx * dy;
            gc += 0.5f * gsig * dy * dy;
            gz += w * vZ[p];
            w_buf[p] = w;
          }
          for (int d = 0; d < D; ++d) {
            const float* vc = vC.data() + (size_t)d * P;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int x = xa; x <= xb; ++x) s += w_buf[row + x] * vc[row + x];
            gcol[d] += s;
          }
        }
        float* gg = gbuf.data() + (size_t)id * KG;
        gg[0] += gmx, gg[1] += gmy, gg[2] += ga, gg[3] += gb, gg[4] += gc, gg[5] += go, gg[6] += gz;
        for (int d = 0; d < D; ++d) gg[7 + d] += gcol[d];
      }
    }
  }

  // Reduce the per-thread buffers into the outputs (shared opacities/colours sum over cameras).
  const bool shared_o = a.opac_cstride == 0, shared_c = a.color_cstride == 0;
  if (shared_o) std::fill(g_opacities, g_opacities + N, 0.f);
  if (shared_c) std::fill(g_colors, g_colors + N * D, 0.f);
#pragma omp parallel for num_threads(T_threads) schedule(static)
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
