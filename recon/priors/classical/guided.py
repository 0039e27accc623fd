"""Guided matching: once cameras are placed, match pairs again along the epipolar lines of the current
cameras and rebuild the model on the denser, loop-closing tracks."""

from __future__ import annotations

import numpy as np

from recon.matching.features import Features
from recon.matching.match import match_descriptors
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.sfm_model import SfMModel, rotation_change_deg
from recon.priors.classical.tracks import TrackSet
from recon.priors.classical.twoview import TwoView, fundamental_from_poses


def guided_rematch(
    model: SfMModel,
    feats: list[Features],
    graph: list[tuple[int, int]],
    verified: list[TwoView],
    fixed: int,
    refine_focal: bool,
    env: dict[int, tuple[float, float]],
) -> tuple[SfMModel, dict]:
    """Match every pair of the pair graph whose views are both placed again, guided by the epipolar
    geometry of the current cameras, and rebuild the model on the union of these and the verified matches.

    Sparse wide-baseline captures leave few unguided matches: the ratio test over the whole image rejects
    repeated texture, and pairs seen from very different directions may not verify at all, so the views
    form a chain and the shared focal is barely observable. Along an epipolar line most of that ambiguity
    disappears (standard two-stage, guided matching). The new tracks close loops between views and cover
    more of each image, which pins down the focal and the relative rotations. The cameras are kept; points
    are re-triangulated with the usual angle and reprojection checks, kept only within each view's depth
    range ``env`` (see ``SfMConfig.guided_depth_margin``) and bundle-adjusted with the cameras.
    Returns (the model, {"pairs": pairs matched, "matches": guided matches found, "kept": whether
    the new model replaced the old one}).
    """
    cfg = model.cfg
    by_pair = {(p.i, p.j): p for p in verified}
    pairs: list[TwoView] = []
    n_new = 0
    for i, j in graph:
        if i not in model.w2c or j not in model.w2c:
            continue
        F = fundamental_from_poses(model.K, model.w2c[i], model.w2c[j])
        m = match_descriptors(feats[i], feats[j], cfg.ratio, F=F,
                              max_epipolar_px=cfg.guided_epipolar_factor * model.thr)
        n_new += len(m)
        old = by_pair.get((i, j))
        if old is not None and old.e_inliers is not None:
            m = np.unique(np.concatenate([old.matches[old.e_inliers], m]), axis=0)
        if len(m):
            pairs.append(TwoView(i, j, m, e_inliers=np.ones(len(m), bool)))
    new = model.with_tracks(TrackSet(feats, pairs, model.tracks.merge_radius_px), env)
    info = {"pairs": len(pairs), "matches": n_new, "points": new.triangulate()}
    info["kept"] = info["points"] >= cfg.pnp_min_inliers
    if not info["kept"]:
        return model, info  # nothing usable: keep the old model
    new.bundle(fixed=fixed, refine_focal=refine_focal)
    new.triangulate()
    return new, info


def model_change(before_w2c: dict[int, np.ndarray], before_focal: float, model: SfMModel) -> dict:
    """How far a refinement moved the model: the largest rotation change of a camera (degrees, relative to
    the fixed gauge, so it is invariant to how the cameras were expressed) and the relative focal change."""
    rot = 0.0
    for v, w in before_w2c.items():
        if v in model.w2c:
            rot = max(rot, rotation_change_deg(model.w2c[v][:3, :3], w[:3, :3]))
    return {"rotation_deg": rot, "focal_rel": abs(model.focal / before_focal - 1.0)}


def guided_rounds(
    model: SfMModel, feats: list[Features], graph: list[tuple[int, int]], verified: list[TwoView],
    fixed: int, refine_focal: bool, cfg: SfMConfig,
) -> tuple[SfMModel, list[dict]]:
    """Up to ``cfg.guided_rounds`` rounds of :func:`guided_rematch` (none with fewer than three placed
    views), stopping once a round barely changed the model. Returns the model and per-round info."""
    rounds = []
    env = model.depth_envelope(cfg.guided_depth_margin)
    # With two views the guided matches would be chosen by the very epipolar geometry they then re-estimate,
    # with nothing to check them against and no focal to refine (measured: no gain, sometimes a loss).
    for _ in range(cfg.guided_rounds if len(model.w2c) >= 3 else 0):
        before_w2c, before_f = {v: w.copy() for v, w in model.w2c.items()}, model.focal
        model, info = guided_rematch(model, feats, graph, verified, fixed, refine_focal, env)
        info["change"] = model_change(before_w2c, before_f, model)
        rounds.append(info)
        if info["change"]["rotation_deg"] < cfg.guided_converged_deg and \
                info["change"]["focal_rel"] < cfg.guided_converged_focal:
            break  # converged: another round would re-find the same matches
    return model, rounds
