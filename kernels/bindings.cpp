// PyTorch bindings of the CPU rasteriser kernels (the only translation unit that includes torch).
#include <torch/extension.h>

#include <vector>

#include "raster.h"

namespace rk = recon_kernels;
using torch::Tensor;

namespace {

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

rk::ProjectionArgs proj_args(const Tensor& means, const Tensor& w2c, int64_t width, int64_t height, double eps2d,
                             double near_plane, double far_plane) {
  rk::ProjectionArgs a;
  a.C = w2c.size(0), a.N = means.size(0);
  a.width = (int)width, a.height = (int)height;
  a.eps2d = (float)eps2d, a.near_plane = (float)near_plane, a.far_plane = (float)far_plane;
  return a;
}

std::vector<Tensor> project_forward(Tensor means, Tensor quats, Tensor scales, Tensor w2c, Tensor K, int64_t width,
                                    int64_t height, double eps2d, double near_plane, double far_plane,
                                    int64_t n_threads) {
  for (const auto& [t, n] : {std::pair{means, "means"}, {quats, "quats"}, {scales, "scales"}, {w2c, "w2c"}, {K, "K"}})
    check(t, n);
  const auto a = proj_args(means, w2c, width, height, eps2d, near_plane, far_plane);
  auto f = means.options();
  Tensor means2d = torch::empty({a.C, a.N, 2}, f), conics = torch::empty({a.C, a.N, 3}, f);
  Tensor depths = torch::empty({a.C, a.N}, f);
  Tensor radii = torch::empty({a.C, a.N, 2}, f.dtype(torch::kInt32));
  rk::project_forward(a, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                      w2c.data_ptr<float>(), K.data_ptr<float>(), means2d.data_ptr<float>(),
                      conics.data_ptr<float>(), depths.data_ptr<float>(), radii.data_ptr<int32_t>(),
                      (int)n_threads);
  return {means2d, conics, depths, radii};
}

std::vector<Tensor> project_backward(Tensor means, Tensor quats, Tensor scales, Tensor w2c, Tensor K, int64_t width,
                                     int64_t height, double eps2d, double near_plane, double far_plane,
                                     Tensor v_means2d, Tensor v_conics, Tensor v_depths, int64_t n_threads) {
  for (const auto& [t, n] : {std::pair{v_means2d, "v_means2d"}, {v_conics, "v_conics"}, {v_depths, "v_depths"}})
    check(t, n);
  const auto a = proj_args(means, w2c, width, height, eps2d, near_plane, far_plane);
  Tensor g_means = torch::empty_like(means), g_quats = torch::empty_like(quats);
  Tensor g_scales = torch::empty_like(scales), g_w2c = torch::empty_like(w2c);
  rk::project_backward(a, means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                       w2c.data_ptr<float>(), K.data_ptr<float>(), v_means2d.data_ptr<float>(),
                       v_conics.data_ptr<float>(), v_depths.data_ptr<float>(), g_means.data_ptr<float>(),
                       g_quats.data_ptr<float>(), g_scales.data_ptr<float>(), g_w2c.data_ptr<float>(),
                       (int)n_threads);
  return {g_means, g_quats, g_scales, g_w2c};
}

rk::RasterArgs raster_args(const Tensor& means2d, const Tensor& opacities, const Tensor& colors, int64_t width,
                           int64_t height, int64_t tile_size) {
  rk::RasterArgs a;
  a.C = means2d.size(0), a.N = means2d.size(1);
  a.D = (int)colors.size(-1);
  a.width = (int)width, a.height = (int)height, a.tile_size = (int)tile_size;
  a.opac_cstride = opacities.dim() == 1 ? 0 : a.N;
  a.color_cstride = colors.dim() == 2 ? 0 : a.N * a.D;
  return a;
}

// Returns colours (C,H,W,D), alphas (C,H,W,1), accumulated depth (C,H,W,1) and, for the backward pass,
// the number of processed tile-list entries per pixel (C,H,W) int32, tile offsets, tile lists and the
// packed per-Gaussian records.
std::vector<Tensor> rasterize_forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor depths,
                                      Tensor radii, int64_t width, int64_t height, int64_t tile_size,
                                      int64_t n_threads) {
  for (const auto& [t, n] : {std::pair{means2d, "means2d"}, {conics, "conics"}, {opacities, "opacities"},
                             {colors, "colors"}, {depths, "depths"}})
    check(t, n);
  TORCH_CHECK(radii.scalar_type() == torch::kInt32 && radii.is_contiguous(), "radii must be contiguous int32");
  const auto a = raster_args(means2d, opacities, colors, width, height, tile_size);
  auto f = means2d.options();
  Tensor records = torch::empty({a.C * a.N, rk::kRecordFloats}, f);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(records.data_ptr()) % 64 == 0, "records must be 64-byte aligned");
  rk::pack_gaussians(a, means2d.data_ptr<float>(), conics.data_ptr<float>(), opacities.data_ptr<float>(),
                     colors.data_ptr<float>(), depths.data_ptr<float>(), records.data_ptr<float>(), (int)n_threads);
  std::vector<int64_t> offsets;
  std::vector<int32_t> ids;
  rk::bin_gaussians(a, records.data_ptr<float>(), radii.data_ptr<int32_t>(), offsets, ids, (int)n_threads);
  Tensor out_c = torch::empty({a.C, height, width, a.D}, f), out_a = torch::empty({a.C, height, width, 1}, f);
  Tensor out_z = torch::empty({a.C, height, width, 1}, f);
  Tensor last = torch::empty({a.C, height, width}, f.dtype(torch::kInt32));
  Tensor t_off = torch::from_blob(offsets.data(), {(int64_t)offsets.size()}, torch::kInt64).clone();
  Tensor t_ids = torch::from_blob(ids.data(), {(int64_t)ids.size()}, torch::kInt32).clone();
  rk::rasterize_forward(a, records.data_ptr<float>(), colors.data_ptr<float>(), t_off.data_ptr<int64_t>(),
                        t_ids.data_ptr<int32_t>(), out_c.data_ptr<float>(), out_a.data_ptr<float>(),
                        out_z.data_ptr<float>(), last.data_ptr<int32_t>(), (int)n_threads);
  return {out_c, out_a, out_z, last, t_off, t_ids, records};
}

std::vector<Tensor> rasterize_backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor depths,
                                       int64_t width, int64_t height, int64_t tile_size, Tensor records,
                                       Tensor tile_offsets, Tensor tile_ids, Tensor out_colors, Tensor out_alphas,
                                       Tensor out_depths, Tensor last, Tensor v_colors, Tensor v_alphas,
                                       Tensor v_depths, int64_t n_threads) {
  for (const auto& [t, n] : {std::pair{v_colors, "v_colors"}, {v_alphas, "v_alphas"}, {v_depths, "v_depths"}})
    check(t, n);
  const auto a = raster_args(means2d, opacities, colors, width, height, tile_size);
  Tensor g_means2d = torch::empty_like(means2d), g_conics = torch::empty_like(conics);
  Tensor g_opac = torch::empty_like(opacities), g_colors = torch::empty_like(colors);
  Tensor g_depths = torch::empty_like(depths);
  rk::rasterize_backward(a, records.data_ptr<float>(), colors.data_ptr<float>(), tile_offsets.data_ptr<int64_t>(),
                         tile_ids.data_ptr<int32_t>(), out_colors.data_ptr<float>(), out_alphas.data_ptr<float>(),
                         out_depths.data_ptr<float>(), last.data_ptr<int32_t>(), v_colors.data_ptr<float>(),
                         v_alphas.data_ptr<float>(), v_depths.data_ptr<float>(), g_means2d.data_ptr<float>(),
                         g_conics.data_ptr<float>(), g_opac.data_ptr<float>(), g_colors.data_ptr<float>(),
                         g_depths.data_ptr<float>(), (int)n_threads);
  return {g_means2d, g_conics, g_opac, g_colors, g_depths};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon CPU rasteriser kernels (see recon/render/native.py)";
  m.def("project_forward", &project_forward);
  m.def("project_backward", &project_backward);
  m.def("rasterize_forward", &rasterize_forward);
  m.def("rasterize_backward", &rasterize_backward);
}
