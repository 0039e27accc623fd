// Stage 1: EWA projection of 3D Gaussians into pinhole cameras, forward and analytic backward.
//
// Arithmetic is in double (it is O(C N), cheap next to compositing), so the float32 outputs carry little
// more than their final rounding; torch_ref.py evaluates the same formulas in float32.  Parallel over
// Gaussians (dynamic chunks, robust to a thread losing its core on a shared machine): each
// thread owns whole Gaussians (all cameras), so the per-Gaussian gradients need no reduction; the w2c
// gradients are reduced from per-thread buffers.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "raster.h"

namespace recon_kernels {
namespace {

struct Mat3 {
  double m[9];
  double operator()(int i, int j) const { return m[3 * i + j]; }
  double& operator()(int i, int j) { return m[3 * i + j]; }
};

inline Mat3 matmul(const Mat3& A, const Mat3& B) {
  Mat3 r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r(i, j) = A(i, 0) * B(0, j) + A(i, 1) * B(1, j) + A(i, 2) * B(2, j);
  return r;
}
inline Mat3 matmul_bt(const Mat3& A, const Mat3& B) {  // A B^T
  Mat3 r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r(i, j) = A(i, 0) * B(j, 0) + A(i, 1) * B(j, 1) + A(i, 2) * B(j, 2);
  return r;
}
inline Mat3 matmul_at(const Mat3& A, const Mat3& B) {  // A^T B
  Mat3 r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r(i, j) = A(0, i) * B(0, j) + A(1, i) * B(1, j) + A(2, i) * B(2, j);
  return r;
}

// Normalised quaternion (w, x, y, z) and its rotation matrix; norm clamped like quat_normalize.
inline void quat_rotmat(const float* q_in, double qn[4], double& norm, Mat3& R) {
  const double w = q_in[0], x = q_in[1], y = q_in[2], z = q_in[3];
  norm = std::max(std::sqrt(w * w + x * x + y * y + z * z), 1e-12);
  qn[0] = w / norm, qn[1] = x / norm, qn[2] = y / norm, qn[3] = z / norm;
  const double W = qn[0], X = qn[1], Y = qn[2], Z = qn[3];
  R.m[0] = 1 - 2 * (Y * Y + Z * Z), R.m[1] = 2 * (X * Y - W * Z), R.m[2] = 2 * (X * Z + W * Y);
  R.m[3] = 2 * (X * Y + W * Z), R.m[4] = 1 - 2 * (X * X + Z * Z), R.m[5] = 2 * (Y * Z - W * X);
  R.m[6] = 2 * (X * Z - W * Y), R.m[7] = 2 * (Y * Z + W * X), R.m[8] = 1 - 2 * (X * X + Y * Y);
}

struct Camera {
  Mat3 R;
  double t[3];
  double fx, fy, cx, cy;
  double lim_xp, lim_xn, lim_yp, lim_yn;  // tangent limits of the Jacobian's evaluation point
};

Camera load_camera(const float* w2c, const float* K, int width, int height) {
  Camera cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R(i, j) = w2c[4 * i + j];
    cam.t[i] = w2c[4 * i + 3];
  }
  cam.fx = K[0], cam.fy = K[4], cam.cx = K[2], cam.cy = K[5];
  const double half_x = 0.5 * width / cam.fx, half_y = 0.5 * height / cam.fy;
  cam.lim_xp = (width - cam.cx) / cam.fx + 0.3 * half_x;
  cam.lim_xn = cam.cx / cam.fx + 0.3 * half_x;
  cam.lim_yp = (height - cam.cy) / cam.fy + 0.3 * half_y;
  cam.lim_yn = cam.cy / cam.fy + 0.3 * half_y;
  return cam;
}

// Everything of one (camera, Gaussian) pair that both passes need.
struct Splat {
  double p[3];       // camera-frame mean
  bool in_depth;     // near < z < far
  double z;          // z, or 1 for depth-culled Gaussians (a finite stand-in, as torch_ref)
  double u, v;       // x/z, y/z before clamping
  bool in_u, in_v;   // inside the clamp range (gradient passes)
  double xc, yc;     // clamped evaluation point
  double J[6];       // 2x3 perspective Jacobian at (xc, yc, z)
  Mat3 cov_c;        // camera-frame 3D covariance
  double sxx, sxy, syy, det, det_safe;
};

inline void splat_setup(const Camera& cam, const float* mean, const Mat3& cov3d, const ProjectionArgs& a,
                        Splat& s) {
  for (int i = 0; i < 3; ++i)
    s.p[i] = cam.R(i, 0) * mean[0] + cam.R(i, 1) * mean[1] + cam.R(i, 2) * mean[2] + cam.t[i];
  const double depth = s.p[2];
  // Compare in float like the reference does (depths are a float32 tensor there).
  const float depth_f = (float)depth;
  s.in_depth = depth_f > a.near_plane && depth_f < a.far_plane;
  s.z = s.in_depth ? depth : 1.0;
  const double z = s.z;
  s.u = s.p[0] / z, s.v = s.p[1] / z;
  s.in_u = s.u >= -cam.lim_xn && s.u <= cam.lim_xp;
  s.in_v = s.v >= -cam.lim_yn && s.v <= cam.lim_yp;
  s.xc = z * std::min(std::max(s.u, -cam.lim_xn), cam.lim_xp);
  s.yc = z * std::min(std::max(s.v, -cam.lim_yn), cam.lim_yp);
  s.J[0] = cam.fx / z, s.J[1] = 0, s.J[2] = -cam.fx * s.xc / (z * z);
  s.J[3] = 0, s.J[4] = cam.fy / z, s.J[5] = -cam.fy * s.yc / (z * z);
  s.cov_c = matmul_bt(matmul(cam.R, cov3d), cam.R);
  // cov2d = J cov_c J^T (symmetric 2x2)
  double JC[6];
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 3; ++k)
      JC[3 * i + k] = s.J[3 * i] * s.cov_c(0, k) + s.J[3 * i + 1] * s.cov_c(1, k) + s.J[3 * i + 2] * s.cov_c(2, k);
  const double c00 = JC[0] * s.J[0] + JC[1] * s.J[1] + JC[2] * s.J[2];
  const double c01 = JC[0] * s.J[3] + JC[1] * s.J[4] + JC[2] * s.J[5];
  const double c11 = JC[3] * s.J[3] + JC[4] * s.J[4] + JC[5] * s.J[5];
  s.sxx = c00 + a.eps2d, s.syy = c11 + a.eps2d, s.sxy = c01;
  s.det = s.sxx * s.syy - s.sxy * s.sxy;
  s.det_safe = std::max(s.det, 1e-10);
}

inline void cov3d_of(const float* quat, const float* scale, double qn[4], double& qnorm, Mat3& Rq, Mat3& M,
                     Mat3& cov3d) {
  quat_rotmat(quat, qn, qnorm, Rq);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M(i, j) = Rq(i, j) * (double)scale[j];
  cov3d = matmul_bt(M, M);
}

}  // namespace

void project_forward(const ProjectionArgs& a, const float* means, const float* quats, const float* scales,
                     const float* w2c, const float* K, float* means2d, float* conics, float* depths,
                     int32_t* radii, int n_threads) {
  const int64_t C = a.C, N = a.N;
  std::vector<Camera> cams(C);
  for (int64_t c = 0; c < C; ++c) cams[c] = load_camera(w2c + 16 * c, K + 9 * c, a.width, a.height);
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 512)
  for (int64_t n = 0; n < N; ++n) {
    double qn[4], qnorm;
    Mat3 Rq, M, cov3d;
    cov3d_of(quats + 4 * n, scales + 3 * n, qn, qnorm, Rq, M, cov3d);
    for (int64_t c = 0; c < C; ++c) {
      const Camera& cam = cams[c];
      Splat s;
      splat_setup(cam, means + 3 * n, cov3d, a, s);
      const int64_t i = c * N + n;
      const double u = cam.fx * s.p[0] / s.z + cam.cx, v = cam.fy * s.p[1] / s.z + cam.cy;
      means2d[2 * i] = (float)u, means2d[2 * i + 1] = (float)v;
      conics[3 * i] = (float)(s.syy / s.det_safe);
      conics[3 * i + 1] = (float)(-s.sxy / s.det_safe);
      conics[3 * i + 2] = (float)(s.sxx / s.det_safe);
      depths[i] = (float)s.p[2];
      // Radii from the float32 blurred variances, as the reference rounds them before ceil().
      const float rx = std::ceil((float)kRadiusSigmas * std::sqrt(std::max((float)s.sxx, 0.f)));
      const float ry = std::ceil((float)kRadiusSigmas * std::sqrt(std::max((float)s.syy, 0.f)));
      const float uf = (float)u, vf = (float)v;
      const bool on_image = uf + rx > 0 && uf - rx < a.width && vf + ry > 0 && vf - ry < a.height;
      const bool keep = s.in_depth && s.det > 0 && on_image;
      radii[2 * i] = keep ? (int32_t)rx : 0;
      radii[2 * i + 1] = keep ? (int32_t)ry : 0;
    }
  }
}

void project_backward(const ProjectionArgs& a, const float* means, const float* quats, const float* scales,
                      const float* w2c, const float* K, const float* v_means2d, const float* v_conics,
                      const float* v_depths, float* g_means, float* g_quats, float* g_scales, float* g_w2c,
                      int n_threads) {
  const int64_t C = a.C, N = a.N;
  std::vector<Camera> cams(C);
  for (int64_t c = 0; c < C; ++c) cams[c] = load_camera(w2c + 16 * c, K + 9 * c, a.width, a.height);
  const int T = std::max(1, n_threads);
  std::vector<double> w2c_buf((size_t)T * C * 12, 0.0);  // per thread: dL/dR (9) and dL/dt (3)

#pragma omp parallel num_threads(T)
  {
    double* my_w2c = w2c_buf.data() + (size_t)omp_get_thread_num() * C * 12;
#pragma omp for schedule(dynamic, 512)
    for (int64_t n = 0; n < N; ++n) {
      double qn[4], qnorm;
      Mat3 Rq, M, cov3d;
      cov3d_of(quats + 4 * n, scales + 3 * n, qn, qnorm, Rq, M, cov3d);
      double g_mean[3] = {0, 0, 0};
      Mat3 g_cov3d{};
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = c * N + n;
        const double vu = v_means2d[2 * i], vv = v_means2d[2 * i + 1];
        const double v0 = v_conics[3 * i], v1 = v_conics[3 * i + 1], v2 = v_conics[3 * i + 2];
        const double vz = v_depths[i];
        if (vu == 0 && vv == 0 && v0 == 0 && v1 == 0 && v2 == 0 && vz == 0) continue;
        const Camera& cam = cams[c];
        Splat s;
        splat_setup(cam, means + 3 * n, cov3d, a, s);
        const double z = s.z;

        // conics = (syy, -sxy, sxx) / det_safe
        const double D = s.det_safe;
        const double c0 = s.syy / D, c1 = -s.sxy / D, c2 = s.sxx / D;
        double g_sxx = v2 / D, g_syy = v0 / D, g_sxy = -v1 / D;
        if (s.det >= 1e-10) {  // clamp_min passes the gradient
          const double g_det = -(v0 * c0 + v1 * c1 + v2 * c2) / D;
          g_sxx += g_det * s.syy, g_syy += g_det * s.sxx, g_sxy += -2.0 * g_det * s.sxy;
        }
        // cov2d = J cov_c J^T with G = dL/dcov2d (symmetric; sxy = mean of the off-diagonals)
        const double G[4] = {g_sxx, 0.5 * g_sxy, 0.5 * g_sxy, g_syy};
        const double* J = s.J;
        // GJ = G J (2x3), g_J = 2 G J cov_c, g_cov_c = J^T G J
        double GJ[6];
        for (int i2 = 0; i2 < 2; ++i2)
          for (int k = 0; k < 3; ++k) GJ[3 * i2 + k] = G[2 * i2] * J[k] + G[2 * i2 + 1] * J[3 + k];
        double g_J[6];
        for (int i2 = 0; i2 < 2; ++i2)
          for (int k = 0; k < 3; ++k)
            g_J[3 * i2 + k] = 2.0 * (GJ[3 * i2] * s.cov_c(0, k) + GJ[3 * i2 + 1] * s.cov_c(1, k) +
                                     GJ[3 * i2 + 2] * s.cov_c(2, k));
        Mat3 g_cov_c;
        for (int k = 0; k < 3; ++k)
          for (int l = 0; l < 3; ++l) g_cov_c(k, l) = J[k] * GJ[l] + J[3 + k] * GJ[3 + l];

        // Jacobian entries -> evaluation point (xc, yc, z)
        double g_p[3] = {0, 0, 0};
        const double z2 = z * z, z3 = z2 * z;
        const double g_xc = -cam.fx / z2 * g_J[2];
        const double g_yc = -cam.fy / z2 * g_J[5];
        double g_z = -cam.fx / z2 * g_J[0] - cam.fy / z2 * g_J[4] + 2.0 * cam.fx * s.xc / z3 * g_J[2] +
                     2.0 * cam.fy * s.yc / z3 * g_J[5];
        // xc = z * clamp(x / z): d/dx = 1 inside the range; d/dz = clamp value - inside * x / z
        if (s.in_u) g_p[0] += g_xc;
        g_z += g_xc * (s.xc / z - (s.in_u ? s.u : 0.0));
        if (s.in_v) g_p[1] += g_yc;
        g_z += g_yc * (s.yc / z - (s.in_v ? s.v : 0.0));
        // means2d = (fx x / z + cx, fy y / z + cy)
        g_p[0] += cam.fx / z * vu;
        g_p[1] += cam.fy / z * vv;
        g_z += -(cam.fx * s.p[0] * vu + cam.fy * s.p[1] * vv) / z2;
        if (s.in_depth) g_p[2] += g_z;  // the stand-in z = 1 is a constant
        g_p[2] += vz;                  // depths = p.z

        // p = R mean + t, cov_c = R cov3d R^T
        const Mat3& R = cam.R;
        for (int j = 0; j < 3; ++j) g_mean[j] += R(0, j) * g_p[0] + R(1, j) * g_p[1] + R(2, j) * g_p[2];
        const Mat3 RS = matmul(R, cov3d);
        const Mat3 gR_cov = matmul(g_cov_c, RS);  // (g + g^T) R cov3d with g symmetric -> 2 g R cov3d
        double* gw = my_w2c + 12 * c;
        for (int r = 0; r < 3; ++r) {
          for (int j = 0; j < 3; ++j) gw[3 * r + j] += g_p[r] * means[3 * n + j] + 2.0 * gR_cov(r, j);
          gw[9 + r] += g_p[r];
        }
        const Mat3 g3 = matmul(matmul_at(R, g_cov_c), R);  // R^T g R
        for (int k = 0; k < 9; ++k) g_cov3d.m[k] += g3.m[k];
      }
      for (int j = 0; j < 3; ++j) g_means[3 * n + j] = (float)g_mean[j];

      // cov3d = M M^T, M = Rq diag(s)
      const Mat3 g_M = matmul(g_cov3d, M);  // times 2 below ((g + g^T) M, g symmetric)
      Mat3 g_Rq;
      for (int i2 = 0; i2 < 3; ++i2)
        for (int j = 0; j < 3; ++j) g_Rq(i2, j) = 2.0 * g_M(i2, j) * (double)scales[3 * n + j];
      for (int j = 0; j < 3; ++j)
        g_scales[3 * n + j] =
            (float)(2.0 * (g_M(0, j) * Rq(0, j) + g_M(1, j) * Rq(1, j) + g_M(2, j) * Rq(2, j)));
      // Rotation matrix of the unit quaternion -> unit quaternion
      const double W = qn[0], X = qn[1], Y = qn[2], Z = qn[3];
      const Mat3& Gq = g_Rq;
      double gq[4];
      gq[0] = 2 * (-Z * Gq(0, 1) + Y * Gq(0, 2) + Z * Gq(1, 0) - X * Gq(1, 2) - Y * Gq(2, 0) + X * Gq(2, 1));
      gq[1] = 2 * (Y * Gq(0, 1) + Z * Gq(0, 2) + Y * Gq(1, 0) - 2 * X * Gq(1, 1) - W * Gq(1, 2) + Z * Gq(2, 0) +
                   W * Gq(2, 1) - 2 * X * Gq(2, 2));
      gq[2] = 2 * (-2 * Y * Gq(0, 0) + X * Gq(0, 1) + W * Gq(0, 2) + X * Gq(1, 0) + Z * Gq(1, 2) - W * Gq(2, 0) +
                   Z * Gq(2, 1) - 2 * Y * Gq(2, 2));
      gq[3] = 2 * (-2 * Z * Gq(0, 0) - W * Gq(0, 1) + X * Gq(0, 2) + W * Gq(1, 0) - 2 * Z * Gq(1, 1) +
                   Y * Gq(1, 2) + X * Gq(2, 0) + Y * Gq(2, 1));
      // q_hat = q / max(|q|, eps): project out the radial component (not when the norm is clamped)
      const double dot = W * gq[0] + X * gq[1] + Y * gq[2] + Z * gq[3];
      const bool clamped = qnorm <= 1e-12;
      for (int k = 0; k < 4; ++k) g_quats[4 * n + k] = (float)((gq[k] - (clamped ? 0.0 : qn[k] * dot)) / qnorm);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double acc[12] = {0};
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < 12; ++k) acc[k] += w2c_buf[((size_t)t * C + c) * 12 + k];
    float* g = g_w2c + 16 * c;
    for (int r = 0; r < 3; ++r) {
      for (int j = 0; j < 3; ++j) g[4 * r + j] = (float)acc[3 * r + j];
      g[4 * r + 3] = (float)acc[9 + r];
    }
    for (int j = 0; j < 4; ++j) g[12 + j] = 0.f;
  }
}

}  // namespace recon_kernels
