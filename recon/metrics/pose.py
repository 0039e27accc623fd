"""Camera-pose metrics: the one home of the pose errors (CONVENTIONS "metrics").

They follow the feed-forward reconstruction literature (RRE/RTE over all pairs, their AUC) plus the
absolute trajectory error after a similarity (Umeyama, with scale) alignment of the camera centres. A
similarity has 7 degrees of freedom, so it fits 2 centres exactly (ATE 0 whatever the poses): ATE is
reported only with at least :data:`ATE_MIN_VIEWS` registered views, and with 3 it still says little.
"""

from __future__ import annotations

import itertools
import math

import torch

from recon.cameras import Cameras, camera_centers, so3_log, umeyama
from recon.errors import ReconError

Tensor = torch.Tensor

AUC_THRESHOLDS_DEG = (5, 15, 30)
ATE_MIN_VIEWS = 3
"""Fewest registered views for which ATE is reported (a similarity fit of 2 centres is exact)."""
DEGENERATE_REL = 1e-9
"""A relative translation shorter than this times its cameras' translation lengths has no direction."""


def _rotation_error_deg(R_a: Tensor, R_b: Tensor) -> Tensor:
    """Geodesic angle (degrees) between rotations (..., 3, 3), via the quaternion log.

    More accurate near 0 than arccos of the trace, whose slope is infinite there: float32-built rotations
    (orthonormal to ~1e-7) would otherwise show spurious errors of ~0.02 degrees.
    """
    return torch.rad2deg(so3_log(R_a @ R_b.transpose(-1, -2)).norm(dim=-1))


def _align_orientations(est_w2c: Tensor, ref_w2c: Tensor) -> Tensor:
    """Rotations of ``est_w2c`` (N, 3, 3) after the one global rotation that best aligns them with ``ref``.

    Under a world rotation R_w, w2c rotations become R_i R_w^T and the camera axes (rows of R_i, in world
    coordinates) rotate by R_w. Fitting R_w to the axes and their negations (centroid 0, so Umeyama's
    translation vanishes) is the chordal-L2 rotation alignment. Unlike an alignment fitted on camera
    centres, it is well determined even when the centres are (nearly) collinear, e.g. a forward arc.
    """
    axes_est = est_w2c[:, :3, :3].reshape(-1, 3)
    axes_ref = ref_w2c[:, :3, :3].reshape(-1, 3)
    _, R_w, _ = umeyama(torch.cat([axes_est, -axes_est]), torch.cat([axes_ref, -axes_ref]), with_scale=False)
    return est_w2c[:, :3, :3] @ R_w.T


def _angle_between_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle (degrees) between vectors (..., 3); meaningless where either is (near) zero-length."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def relative_pose_errors(est_w2c: Tensor, ref_w2c: Tensor, translation_sign_ambiguity: bool = False):
    """Relative rotation and translation-direction errors (degrees) for all pairs i < j.

    For a pair, the relative transform is ``T_ij = w2c_i @ inv(w2c_j)`` (camera j -> camera i). RRE is the
    geodesic angle between the estimated and reference relative rotations; RTE the angle between the
    relative translations (directions only, so the global scale does not matter). Both are invariant to a
    similarity of the world. With ``translation_sign_ambiguity`` RTE is folded to min(e, 180 - e), as some
    papers do; the default is the stricter signed error.

    A pair whose estimated or reference relative translation has no length (two cameras on one centre, up
    to float rounding: shorter than :data:`DEGENERATE_REL` times the pair's translation vectors) has no
    direction to compare: its RTE is 180 degrees, so collapsed cameras never score a perfect RTE.

    Returns (pairs (P, 2) long, rre (P,), rte (P,)), computed in float64.
    """
    est = est_w2c.detach().double()
    ref = ref_w2c.detach().double()
    n = est.shape[0]
    pairs = torch.tensor(list(itertools.combinations(range(n), 2)), dtype=torch.long).view(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]

    def rel(w2c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Relative rotations (P, 3, 3), translations (P, 3) and whether each translation is degenerate."""
        R_i, t_i = w2c[i, :3, :3], w2c[i, :3, 3]
        R_j, t_j = w2c[j, :3, :3], w2c[j, :3, 3]
        R_ij = R_i @ R_j.transpose(-1, -2)
        t_ij = t_i - (R_ij @ t_j.unsqueeze(-1)).squeeze(-1)
        # t_ij = -R_i (C_i - C_j): rounding leaves ~1e-16 |t| when the centres coincide.
        degenerate = t_ij.norm(dim=-1) <= DEGENERATE_REL * (t_i.norm(dim=-1) + t_j.norm(dim=-1))
        return R_ij, t_ij, degenerate

    R_e, t_e, deg_e = rel(est)
    R_r, t_r, deg_r = rel(ref)
    rre = _rotation_error_deg(R_e, R_r)
    rte = _angle_between_deg(t_e, t_r)
    if translation_sign_ambiguity:
        rte = torch.minimum(rte, 180.0 - rte)
    rte = torch.where(deg_e | deg_r, torch.full_like(rte, 180.0), rte)
    return pairs, rre, rte


def pose_auc(errors_deg: Tensor, threshold_deg: int) -> float:
    """mAA at ``threshold_deg``: the mean over integer thresholds t = 1..T of the fraction of errors < t."""
    if errors_deg.numel() == 0:
        return float("nan")
    ts = torch.arange(1, threshold_deg + 1, dtype=errors_deg.dtype)
    return float((errors_deg[None, :] < ts[:, None]).double().mean(1).mean())


def aligned_centers(est_w2c: Tensor, ref_w2c: Tensor) -> Tensor:
    """Estimated camera centres (N, 3) mapped into the reference frame by the similarity (Umeyama, with
    scale) fitted from the estimated to the reference centres of the same N >= 2 views; float64."""
    c_est = camera_centers(est_w2c.detach().double().cpu())
    c_ref = camera_centers(ref_w2c.detach().double().cpu())
    s, R, t = umeyama(c_est, c_ref)
    return s * c_est @ R.T + t


def match_cameras(est: Cameras, ref: Cameras) -> tuple[Tensor, Tensor]:
    """Estimated w2c in the order of ``ref`` (matched by name): ((N, 4, 4) float64, registered (N,) bool).

    ``ref`` holds every view the method was given; views missing from ``est`` (not placed) get an identity
    placeholder and registered False, which :func:`pose_metrics` scores as unregistered.
    """
    index = {name: k for k, name in enumerate(est.names)}
    est_w2c = torch.eye(4, dtype=torch.float64).repeat(len(ref), 1, 1)
    registered = torch.zeros(len(ref), dtype=torch.bool)
    for k, name in enumerate(ref.names):
        if name in index:
            est_w2c[k] = est.w2c[index[name]].detach().double().cpu()
            registered[k] = True
    return est_w2c, registered


def camera_pose_metrics(est: Cameras, ref: Cameras) -> dict:
    """:func:`pose_metrics` of cameras ``est`` (the views a method placed) against ``ref`` (every view it was
    given, the reference cameras); views of ``ref`` missing from ``est`` count as unregistered."""
    est_w2c, registered = match_cameras(est, ref)
    return pose_metrics(est_w2c, ref.w2c, registered)


def pose_metrics(
    est_w2c: Tensor,
    ref_w2c: Tensor,
    registered: Tensor | None = None,
    *,
    translation_sign_ambiguity: bool = False,
) -> dict:
    """Pose accuracy of estimated cameras against reference cameras of the same views (same order).

    Args:
        est_w2c: (N, 4, 4) estimated world-to-camera transforms (any world frame and scale).
        ref_w2c: (N, 4, 4) reference world-to-camera transforms.
        registered: (N,) bool mask of the views the method placed, or None for all. Rows of ``est_w2c``
            for unregistered views are ignored; every pair involving one counts as a 180 degree error.
        translation_sign_ambiguity: fold RTE to min(e, 180 - e) (see :func:`relative_pose_errors`).

    Returns a JSON-ready dict:
        ``ate``: RMSE of the registered camera centres after the Umeyama similarity (est -> ref) fitted on
        them, in reference units; None with fewer than :data:`ATE_MIN_VIEWS` registered views (the fit of
        2 centres is exact, so ATE would be 0 whatever the poses);
        ``ate_frac``: ``ate`` / reference trajectory diameter (max pairwise distance of reference centres);
        ``rot_err_deg``: mean absolute rotation error of the registered cameras after the global rotation
        that best aligns their orientations (independent of the centres, so also defined for 2 cameras);
        ``rre_deg``, ``rte_deg``: mean relative rotation / translation-direction errors over all pairs;
        ``auc``: {"5", "15", "30"} mAA of max(RRE, RTE) per pair; ``n_views``, ``n_registered``, ``n_pairs``.
        Undefined values are None (not NaN) so the dict is valid JSON.
    """
    if est_w2c.shape != ref_w2c.shape or est_w2c.dim() != 3 or est_w2c.shape[1:] != (4, 4):
        raise ReconError(
            "pose_metrics needs matching (N, 4, 4) w2c, got "
            f"{tuple(est_w2c.shape)} and {tuple(ref_w2c.shape)}"
        )
    n = est_w2c.shape[0]
    est = est_w2c.detach().double().cpu()
    ref = ref_w2c.detach().double().cpu()
    reg = torch.ones(n, dtype=torch.bool) if registered is None else registered.detach().cpu().bool().view(n)
    n_reg = int(reg.sum())

    # Absolute errors after a similarity alignment on the registered centres.
    c_ref = camera_centers(ref)
    diameter = float(torch.cdist(c_ref, c_ref).max()) if n > 1 else 0.0
    if n_reg >= ATE_MIN_VIEWS:
        ate = float(((aligned_centers(est[reg], ref[reg]) - c_ref[reg]) ** 2).sum(-1).mean().sqrt())
    else:
        ate = float("nan")
    if n_reg >= 1:
        rot_aligned = _align_orientations(est[reg], ref[reg])
        rot_err = float(_rotation_error_deg(rot_aligned, ref[reg][:, :3, :3]).mean())
    else:
        rot_err = float("nan")
    ate_frac = ate / diameter if diameter > 0 else float("nan")

    # Relative errors over all pairs; pairs with an unregistered view count as 180 degrees.
    pairs, rre, rte = relative_pose_errors(est, ref, translation_sign_ambiguity)
    both = reg[pairs[:, 0]] & reg[pairs[:, 1]] if len(pairs) else torch.zeros(0, dtype=torch.bool)
    rre = torch.where(both, rre, torch.full_like(rre, 180.0))
    rte = torch.where(both, rte, torch.full_like(rte, 180.0))
    worst = torch.maximum(rre, rte)
    mean = (lambda v: float(v.mean()) if v.numel() else float("nan"))  # noqa: E731

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "ate": clean(ate),
        "ate_frac": clean(ate_frac),
        "rot_err_deg": clean(rot_err),
        "rre_deg": clean(mean(rre)),
        "rte_deg": clean(mean(rte)),
        "auc": {str(T): clean(pose_auc(worst, T)) for T in AUC_THRESHOLDS_DEG},
        "n_views": n,
        "n_registered": n_reg,
        "n_pairs": int(len(pairs)),
    }
