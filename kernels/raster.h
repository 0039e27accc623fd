// CPU rasteriser kernels for 3D Gaussian splatting (forward and hand-written backward).
//
// Plain C++ on raw float32 pointers (no torch headers), so that these translation units compile in a
// few seconds; bindings.cpp wraps them for PyTorch.  Semantics are those of recon/render/torch_ref.py
// (gsplat 1.5.3 "classic" rules with the project's ALPHA_MAX = 0.99); see that file for the maths.
//
// Layouts (all row-major, contiguous):
//   means (N,3), quats (N,4) wxyz, scales (N,3), w2c (C,4,4), K (C,3,3)
//   means2d (C,N,2), conics (C,N,3), depths (C,N), radii (C,N,2) int32
//   opacities (N,) or (C,N) (camera stride 0 or N), colors (C,N,D) or (N,D) (camera stride 0 or N*D)
//   images (C,H,W,D), alphas and accumulated depth (C,H,W)
#pragma once

#include <cstdint>
#include <vector>

namespace recon_kernels {

constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTMin = 1e-4f;
constexpr double kRadiusSigmas = 3.33;

struct ProjectionArgs {
  int64_t C, N;
  int width, height;
  float eps2d, near_plane, far_plane;
};

void project_forward(const ProjectionArgs& a, const float* means, const float* quats, const float* scales,
                     const float* w2c, const float* K, float* means2d, float* conics, float* depths,
                     int32_t* radii, int n_threads);

// Upstream gradients v_* may not be null (pass zeros).  Outputs are overwritten.
void project_backward(const ProjectionArgs& a, const float* means, const float* quats, const float* scales,
                      const float* w2c, const float* K, const float* v_means2d, const float* v_conics,
                      const float* v_depths, float* g_means, float* g_quats, float* g_scales, float* g_w2c,
                      int n_threads);

struct RasterArgs {
  int64_t C, N;
  int D;
  int width, height, tile_size;
  int64_t opac_cstride;   // 0 when opacities are shared by all cameras, else N
  int64_t color_cstride;  // 0 when colours are shared by all cameras, else N * D
  int tiles_x() const { return (width + tile_size - 1) / tile_size; }
  int tiles_y() const { return (height + tile_size - 1) / tile_size; }
  int64_t n_tiles() const { return C * tiles_x() * tiles_y(); }
};

// Per (camera, Gaussian) record of everything the compositing loops read, one 64-byte cache line:
// mean (2), conic (3), opacity, depth, the inclusive pixel box outside which alpha < 1/255 (4 int32) and
// the first kInlineColors colour channels.  records holds C * N * kRecordFloats floats (64-byte aligned).
constexpr int kInlineColors = 5;
constexpr int kRecordFloats = 16;
void pack_gaussians(const RasterArgs& a, const float* means2d, const float* conics, const float* opacities,
                    const float* colors, const float* depths, float* records, int n_threads);

// Tile lists: for global tile t (camera * tiles_per_image + row * tiles_x + col), the flat Gaussian ids
// (camera * N + n) are tile_ids[tile_offsets[t] .. tile_offsets[t + 1]) in increasing depth (stable).  A
// Gaussian is listed in the tiles of torch_ref's rule (its radius box) that its visibility box touches.
void bin_gaussians(const RasterArgs& a, const float* records, const int32_t* radii,
                   std::vector<int64_t>& tile_offsets, std::vector<int32_t>& tile_ids, int n_threads);

// Forward compositing.  Also writes, per pixel, the number of entries of its tile list that were processed up
// to the last added Gaussian (the backward pass stops there).  colors are only read when D > kInlineColors.
void rasterize_forward(const RasterArgs& a, const float* records, const float* colors, const int64_t* tile_offsets,
                       const int32_t* tile_ids, float* out_colors, float* out_alphas, float* out_depths,
                       int32_t* last_count, int n_threads);

// Backward pass (needs the forward's outputs).  g_opacities / g_colors follow the (possibly shared) input
// layouts.
void rasterize_backward(const RasterArgs& a, const float* records, const float* colors,
                        const int64_t* tile_offsets, const int32_t* tile_ids, const float* out_colors,
                        const float* out_alphas, const float* out_depths, const int32_t* last_count,
                        const float* v_colors, const float* v_alphas, const float* v_depths, float* g_means2d,
                        float* g_conics, float* g_opacities, float* g_colors, float* g_depths, int n_threads);

}  // namespace recon_kernels
