"""Outlier pose correction (after SparseAGS): find training views whose pose is badly off after the first
optimisation round and re-place them against the Gaussians that the other views agree on.

A feed-forward prior sometimes puts one camera tens of degrees off. Joint optimisation cannot pull it back
(the photometric loss is only locally convex), and worse, the prior's point map of that view is placed with
the wrong pose, so the Gaussians carry a misplaced copy of what it sees.

Steps (all in the trained reconstruction's frame):

1. Score every view: its photometric residual, and the reprojection error of its SIFT matches with every
   other view (3D points from the other view's rendered depth, projected with this view's pose; per view
   the median over its pairs, so one bad partner does not condemn a good view). Views far above the others
   in robust statistics (median + k * MAD, and above an absolute floor) are flagged.
2. For each flagged view: the Gaussians seen on the surfaces of the inlier views (the outlier's misplaced
   ones drop out) are the frozen scene. Candidate poses: PnP (RANSAC) from the view's 2D-3D matches against
   the inliers' rendered depth, a grid of rotations of every inlier camera about the scene centre spanning
   the inliers' azimuths plus a margin, and the current pose. All are rendered in batches and the best few
   by photometric loss are refined continuously (:func:`recon.optim.pose.fit_poses`), the current pose
   too, so that the comparison is fair. The new pose is accepted only when its loss is clearly lower.
3. :class:`PoseCorrection` (the stage) re-optimises: from the prior re-initialised with the corrected
   pose (:func:`reposition_prior`) when it has the prior, else continuing from the trained Gaussians.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from recon.cameras import (
    Cameras,
    camera_centers,
    invert_rigid,
    make_rigid,
    rotation_angle_deg,
    so3_exp,
    transform_points,
)
from recon.gaussians import Gaussians
from recon.gaussians.init import InitConfig, init_from_prior
from recon.matching import Features, detect_features, match_descriptors
from recon.optim.losses import photometric_loss
from recon.optim.pose import fit_poses
from recon.optim.trainer import train
from recon.priors.base import PriorResult
from recon.refine.base import RefineContext, Scene
from recon.refine.config import PoseCorrectionConfig
from recon.render import render_gaussians
from recon.render.gaussians import background_tensor

Tensor = torch.Tensor

__all__ = [
    "PoseCorrection", "PoseCorrectionConfig", "ViewScore", "score_pose_outliers", "correct_view",
    "correct_outliers", "reposition_prior",
]


@dataclass
class ViewScore:
    """Per-view diagnostics of the detection step (values for metrics.json)."""

    name: str
    photo: float
    """Photometric loss (0.8 L1 + 0.2 D-SSIM) of the view's render."""
    reproj: float | None
    """Median over the view's pairs of the median match reprojection error, fraction of the diagonal
    (None when the view has no usable matches)."""
    flagged: bool = False


def _robust_outliers(x: np.ndarray, k: float, floor: float) -> np.ndarray:
    """Values above max(floor, median + k * 1.4826 * MAD) (NaN never flags)."""
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return np.zeros(len(x), bool)
    med = np.median(x[ok])
    mad = 1.4826 * np.median(np.abs(x[ok] - med))
    # A MAD of 0 (identical values) must not flag tiny differences: a small fraction of the median.
    thr = max(floor, med + k * max(mad, 0.05 * abs(med)))
    return ok & (x > thr)


@torch.no_grad()
def _render(gaussians: Gaussians, cameras: Cameras, background: Tensor | None, chunk: int = 16):
    """(rgb (C,H,W,3), depth (C,H,W), alpha (C,H,W)) of ``cameras`` in chunks of ``chunk`` cameras."""
    dev = gaussians.means.device
    rgb, depth, alpha = [], [], []
    for s in range(0, len(cameras), chunk):
        sub = cameras.subset(range(s, min(s + chunk, len(cameras)))).to(dev)
        out = render_gaussians(gaussians, sub, None if background is None else background.expand(len(sub), 3))
        rgb.append(out.rgb[..., :3])
        depth.append(out.depth[..., 0])
        alpha.append(out.alpha[..., 0])
    return torch.cat(rgb), torch.cat(depth), torch.cat(alpha)


def _points_at(kp_xy: np.ndarray, depth: Tensor, alpha: Tensor, K: Tensor, w2c: Tensor):
    """World points (M,3) at keypoints (M,2) of one view from its rendered depth, and a validity mask."""
    H, W = depth.shape
    ij = np.clip(np.floor(kp_xy).astype(np.int64), 0, [W - 1, H - 1])
    d = depth[ij[:, 1], ij[:, 0]].double().cpu()
    a = alpha[ij[:, 1], ij[:, 0]].cpu()
    ok = ((d > 0) & (a > 0.5)).numpy()
    xy = torch.from_numpy(kp_xy).double()
    Kd = K.double().cpu()
    x_cam = torch.stack([(xy[:, 0] - Kd[0, 2]) / Kd[0, 0], (xy[:, 1] - Kd[1, 2]) / Kd[1, 1],
                         torch.ones(len(xy), dtype=torch.float64)], -1) * d[:, None]
    X = transform_points(invert_rigid(w2c.double().cpu()), x_cam)
    return X.numpy(), ok


def _project(X: np.ndarray, K: Tensor, w2c: Tensor) -> tuple[np.ndarray, np.ndarray]:
    xc = transform_points(w2c.double().cpu(), torch.from_numpy(X))
    z = xc[:, 2]
    uv = (xc @ K.double().cpu().T)[:, :2] / z.clamp_min(1e-9)[:, None]
    return uv.numpy(), (z > 1e-6).numpy()


@dataclass
class _Matching:
    feats: list[Features]
    pairs: dict[tuple[int, int], np.ndarray]


def _match_all(images: Tensor, cfg: PoseCorrectionConfig) -> _Matching:
    imgs = images.detach().float().cpu().numpy()
    feats = [detect_features(im, cfg.max_features) for im in imgs]
    pairs = {}
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            m = match_descriptors(feats[i], feats[j], cfg.match_ratio)
            pairs[(i, j)] = m
            pairs[(j, i)] = m[:, ::-1].copy()
    return _Matching(feats, pairs)


def score_pose_outliers(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    cfg: PoseCorrectionConfig,
    background: Tensor | None = None,
    matching: _Matching | None = None,
) -> tuple[list[ViewScore], _Matching, tuple[Tensor, Tensor, Tensor]]:
    """Score every training view and flag outliers (see the module docstring).

    Returns the scores, the feature matching (reused for PnP) and the renders (rgb, depth, alpha).
    """
    rgb, depth, alpha = _render(gaussians, cameras, background)
    target = images.to(rgb.device, torch.float32)
    photo = np.array([float(photometric_loss(rgb[i], target[i])) for i in range(len(cameras))])
    matching = matching or _match_all(images, cfg)
    W, H = int(cameras.sizes[0, 0]), int(cameras.sizes[0, 1])
    diag = math.hypot(W, H)
    n = len(cameras)
    reproj = np.full(n, np.nan)
    for i in range(n):
        per_pair = []
        for j in range(n):
            m = matching.pairs.get((i, j))
            if j == i or m is None or len(m) < 4:
                continue
            X, ok = _points_at(matching.feats[j].xy[m[:, 1]], depth[j], alpha[j], cameras.K[j],
                               cameras.w2c[j])
            uv, front = _project(X, cameras.K[i], cameras.w2c[i])
            err = np.linalg.norm(uv - matching.feats[i].xy[m[:, 0]], axis=1)
            err = np.where(front, err, np.inf)[ok]
            if len(err) >= 4:
                per_pair.append(float(np.median(err)) / diag)
        if per_pair:
            reproj[i] = float(np.median(per_pair))
    flag = _robust_outliers(reproj, cfg.mad_k, cfg.min_reproj_frac)
    flag |= _robust_outliers(photo, cfg.mad_k, cfg.min_photo_ratio * float(np.median(photo)))
    # Never more than max_outlier_frac of the views: keep the most deviant (by reprojection, then photo).
    max_out = int(math.floor(cfg.max_outlier_frac * n))
    if flag.sum() > max_out:
        order = np.lexsort((-photo, -np.nan_to_num(reproj, nan=-1.0)))
        keep = [i for i in order if flag[i]][:max_out]
        flag = np.zeros(n, bool)
        flag[keep] = True
    reproj_or_none = [float(r) if np.isfinite(r) else None for r in reproj]
    scores = [ViewScore(cameras.names[i], float(photo[i]), reproj_or_none[i], bool(flag[i]))
              for i in range(n)]
    return scores, matching, (rgb, depth, alpha)


@torch.no_grad()
def _inlier_support(gaussians: Gaussians, cameras: Cameras, depth: Tensor, inliers: list[int], tol: float):
    """Mask (N,) of Gaussians whose centre lies on (within ``tol`` relative depth of) the rendered surface
    of at least one inlier view: the scene the inliers agree on, without the outlier's misplaced copy."""
    means = gaussians.means.detach()
    keep = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    W, H = int(cameras.sizes[0, 0]), int(cameras.sizes[0, 1])
    for j in inliers:
        w2c = cameras.w2c[j].to(means)
        K = cameras.K[j].to(means)
        xc = means @ w2c[:3, :3].T + w2c[:3, 3]
        z = xc[:, 2]
        uv = (xc @ K.T)[:, :2] / z.clamp_min(1e-9)[:, None]
        inside = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        u = uv[:, 0].clamp(0, W - 1).long()
        v = uv[:, 1].clamp(0, H - 1).long()
        d = depth[j].to(means)[v, u]
        keep |= inside & (d > 0) & ((z - d).abs() <= tol * d)
    return keep


def _scene_centre_and_up(cameras: Cameras, depth: Tensor, inliers: list[int]) -> tuple[Tensor, Tensor]:
    """A centre the inlier cameras look at (mean of their optical axes' points at the median rendered
    depth) and the mean 'up' direction of the inliers (OpenCV: -y of the camera frame)."""
    w2c = cameras.w2c[inliers].double().cpu()
    centres = camera_centers(w2c)
    axes = w2c[:, 2, :3]
    med = torch.stack([depth[j][depth[j] > 0].median() if (depth[j] > 0).any() else depth.new_tensor(1.0)
                       for j in inliers]).double().cpu()
    centre = (centres + med[:, None] * axes).mean(0)
    up = -w2c[:, 1, :3].mean(0)
    return centre, up / up.norm().clamp_min(1e-12)


def _rotation_grid(cameras: Cameras, inliers: list[int], centre: Tensor, up: Tensor, cfg) -> Tensor:
    """w2c (M,4,4): every inlier camera rotated about the axis (centre, up) to azimuths spanning the
    inliers' own azimuth range plus ``grid_margin_deg`` on both sides."""
    w2c = cameras.w2c[inliers].double().cpu()
    c2w = invert_rigid(w2c)
    rel = camera_centers(w2c) - centre
    ref = rel[0] - (rel[0] @ up) * up
    ref = ref / ref.norm().clamp_min(1e-12)
    ortho = torch.linalg.cross(up, ref)
    flat = rel - (rel @ up)[:, None] * up
    az = torch.atan2(flat @ ortho, flat @ ref)  # inliers' azimuths about the up axis, from inlier 0
    margin = math.radians(cfg.grid_margin_deg)
    lo, hi = float(az.min()) - margin, float(az.max()) + margin
    grid = torch.linspace(lo, hi, cfg.grid_steps, dtype=torch.float64)
    out = []
    for k in range(len(inliers)):
        angles = grid - az[k]
        R = so3_exp(angles[:, None] * up[None])  # (G,3,3) rotations about the up axis
        T = make_rigid(R, centre - (R @ centre[:, None])[..., 0])  # rotation about the centre
        out.append(invert_rigid(T @ c2w[k]))
    return torch.cat(out)


def _pnp_candidates(view: int, inliers: list[int], cameras: Cameras, depth: Tensor, alpha: Tensor,
                    matching: _Matching) -> list[Tensor]:
    """w2c candidates from PnP-RANSAC on the view's matches against the inliers' rendered surfaces."""
    obj, img = [], []
    for j in inliers:
        m = matching.pairs.get((view, j))
        if m is None or len(m) == 0:
            continue
        X, ok = _points_at(matching.feats[j].xy[m[:, 1]], depth[j], alpha[j], cameras.K[j], cameras.w2c[j])
        obj.append(X[ok])
        img.append(matching.feats[view].xy[m[ok, 0]])
    if not obj:
        return []
    obj_np = np.concatenate(obj)
    img_np = np.concatenate(img)
    if len(obj_np) < 6:
        return []
    W, H = int(cameras.sizes[view, 0]), int(cameras.sizes[view, 1])
    K = cameras.K[view].double().cpu().numpy()
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        obj_np, img_np.astype(np.float64), K, None, reprojectionError=0.02 * math.hypot(W, H),
        iterationsCount=2000, confidence=0.999, flags=cv2.SOLVEPNP_EPNP,
    )
    if not ok or inl is None or len(inl) < 6:
        return []
    R, _ = cv2.Rodrigues(rvec)
    return [make_rigid(torch.from_numpy(R), torch.from_numpy(tvec.reshape(3)))]


@torch.no_grad()
def _rank_candidates(gaussians: Gaussians, cams: Cameras, target: Tensor, background, chunk: int = 16):
    """Photometric loss (M,) of every candidate camera's render against ``target`` (H,W,3)."""
    losses = []
    for s in range(0, len(cams), chunk):
        sub = cams.subset(range(s, min(s + chunk, len(cams))))
        rgb, _, _ = _render(gaussians, sub, background, chunk)
        losses += [float(photometric_loss(rgb[c], target)) for c in range(len(sub))]
    return torch.tensor(losses)


def correct_view(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    view: int,
    inliers: list[int],
    cfg: PoseCorrectionConfig,
    renders: tuple[Tensor, Tensor, Tensor],
    matching: _Matching,
    extent: float,
    background: Tensor | None = None,
) -> dict:
    """Search a better pose for training view ``view`` (index into ``cameras``) against the Gaussians
    supported by ``inliers``. Returns a record: ``w2c`` (4,4) of the best pose, ``accepted``, the losses
    before/after, the number of candidates, and which source (pnp/grid/current) the winner came from."""
    _, depth, alpha = renders
    support = _inlier_support(gaussians, cameras, depth, inliers, cfg.support_depth_tol)
    scene = gaussians.select(support) if int(support.sum()) > 0 else gaussians
    target = images[view].to(gaussians.means.device, torch.float32)
    centre, up = _scene_centre_and_up(cameras, depth, inliers)
    pnp = _pnp_candidates(view, inliers, cameras, depth, alpha, matching)
    grid = _rotation_grid(cameras, inliers, centre, up, cfg)
    current = cameras.w2c[view].double().cpu()
    w2c_all = torch.cat([current[None], *(p[None] for p in pnp), grid]).float()
    sources = ["current"] + ["pnp"] * len(pnp) + ["grid"] * len(grid)
    n = len(w2c_all)
    cands = Cameras(cameras.K[view : view + 1].expand(n, 3, 3).clone(), w2c_all,
                    cameras.sizes[view : view + 1].expand(n, 2).clone(), [f"cand_{k}" for k in range(n)])
    coarse = _rank_candidates(scene, cands, target, background)
    order = [int(k) for k in torch.argsort(coarse) if int(k) != 0][: cfg.top_k]
    keep = [0, *order]  # the current pose is refined too: the comparison must be like for like
    fitted, losses = fit_poses(
        scene, cands.subset(keep), target[None].expand(len(keep), -1, -1, -1).contiguous(),
        iters=cfg.refine_iters, lr=cfg.refine_lr, lr_final=cfg.refine_lr * 1e-2, extent=extent,
        background=background, return_losses=True,
    )
    best = int(torch.argmin(losses[1:])) + 1 if len(keep) > 1 else 0
    old_loss, new_loss = float(losses[0]), float(losses[best])
    accepted = best != 0 and new_loss < cfg.accept_ratio * old_loss
    w2c_new = fitted.w2c[best] if accepted else cameras.w2c[view].cpu()
    return {
        "view": cameras.names[view],
        "accepted": bool(accepted),
        "w2c": w2c_new.detach().cpu().float(),
        "loss_before": old_loss,
        "loss_after": new_loss if accepted else old_loss,
        "best_candidate_loss": new_loss,
        "source": sources[keep[best]],
        "rotation_change_deg": float(rotation_angle_deg(w2c_new[:3, :3].double().cpu(),
                                                        cameras.w2c[view, :3, :3].double().cpu())),
        "num_candidates": n,
        "num_pnp": len(pnp),
        "num_support_gaussians": int(support.sum()),
    }


def correct_outliers(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    cfg: PoseCorrectionConfig,
    extent: float,
    background: Tensor | None = None,
) -> tuple[Cameras, dict]:
    """Detect outlier training views and search better poses for them.

    Args:
        gaussians: the first round's Gaussians (frozen here).
        cameras: the first round's training cameras (N >= 3 for robust statistics; fewer: no-op).
        images: (N, H, W, 3) training images in [0, 1].
        extent: the trainer's scene extent (pose translations are in its units).

    Returns the cameras with accepted corrections applied (unchanged w2c otherwise) and a metrics dict:
    ``scores`` (per view photo/reproj/flagged), ``flagged`` and ``corrected`` view names, and per flagged
    view the search record (losses before/after, source, rotation change).
    """
    n = len(cameras)
    if n < 3:
        return cameras, {"skipped": f"{n} views: too few for robust outlier statistics", "corrected": []}
    scores, matching, renders = score_pose_outliers(gaussians, cameras, images, cfg, background)
    flagged = [i for i, s in enumerate(scores) if s.flagged]
    metrics: dict = {
        "scores": [vars(s) for s in scores],
        "flagged": [cameras.names[i] for i in flagged],
        "corrected": [],
        "views": {},
    }
    w2c = cameras.w2c.clone()
    inliers = [i for i in range(n) if i not in flagged]
    for v in flagged:
        rec = correct_view(gaussians, cameras, images, v, inliers, cfg, renders, matching, extent, background)
        new = rec.pop("w2c")
        metrics["views"][cameras.names[v]] = rec
        if rec["accepted"]:
            w2c[v] = new.to(w2c)
            metrics["corrected"].append(cameras.names[v])
    return cameras.with_w2c(w2c), metrics


def reposition_prior(prior: PriorResult, cameras: Cameras) -> PriorResult:
    """The prior with each view's point map moved rigidly from its prior pose to ``cameras``' pose.

    A prior's per-view geometry (depth in the camera frame) is usually right even when its pose is not,
    so re-expressing every point map with the corrected (and first-round optimised) poses turns a
    misplaced copy of the outlier's surfaces into a consistent one. ``cameras`` are matched by name.
    """
    cams = cameras.subset(prior.cameras.names).to("cpu")
    T = invert_rigid(cams.w2c.double()) @ prior.cameras.w2c.double()  # (M,4,4): old world -> new world
    pts = torch.stack([transform_points(T[m], pm.double().reshape(-1, 3)).reshape(pm.shape)
                       for m, pm in enumerate(prior.pointmaps)]).float()
    return dataclasses.replace(prior, cameras=cams.with_w2c(cams.w2c), pointmaps=pts)


@dataclass
class PoseCorrection:
    """The refinement stage (:class:`recon.refine.base.RefineStage`): detect outlier training views, re-place
    them (:func:`correct_outliers`) and, when one was corrected, re-optimise the scene jointly for
    ``cfg.reopt_iters`` steps (0: the first round's), from the repositioned prior when the context has it
    (the misplaced copy of the outlier's surfaces disappears), else from the trained Gaussians."""

    cfg: PoseCorrectionConfig
    name: str = "poses"

    @property
    def active(self) -> bool:
        return self.cfg.enabled

    def __call__(self, scene: Scene, ctx: RefineContext) -> tuple[Scene, dict]:
        if not self.cfg.enabled:
            return scene, {"skipped": "disabled"}
        t0 = time.perf_counter()
        bg = background_tensor(ctx.train_cfg.background, ctx.images.device)
        cams, pm = correct_outliers(scene.gaussians, scene.cameras, ctx.images, self.cfg, ctx.extent, bg)
        if pm.get("corrected"):
            ctx.log(f"recon: corrected the pose of {', '.join(pm['corrected'])}; re-optimising")
            iters = self.cfg.reopt_iters or ctx.train_cfg.iters
            reopt_cfg = dataclasses.replace(ctx.train_cfg, iters=iters)
            start = scene.gaussians
            if ctx.prior is not None:
                start, _ = init_from_prior(reposition_prior(ctx.prior, cams), ctx.init_cfg or InitConfig())
                start = start.to(ctx.images.device)
            pm["reinitialised"] = ctx.prior is not None
            res = train(start, cams.to(ctx.images.device), ctx.images, reopt_cfg, progress=ctx.progress,
                        callback=ctx.callback)
            scene = Scene(res.gaussians, res.cameras)
            pm["reopt_iters"] = iters
        pm["seconds"] = time.perf_counter() - t0
        return scene, pm
