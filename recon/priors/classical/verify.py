"""Checks that catch a wrong registration before it is reported, and a confidence per placed view.

Two independent kinds of evidence place a view: the multi-view model (PnP on triangulated tracks, bundle
adjustment) and each verified pair's own two-view geometry (its essential matrix). A wrong registration
usually follows one wrong pair, or a focal the matches do not determine, and then the model disagrees
with the view's other pairs. The checks here compare the two:

- pair agreement: per verified pair of placed views, the angle between the model's relative rotation and
  the pair's (re-estimated at the model's focal), and between their baseline directions (only for pairs
  whose median triangulation angle makes the direction observable);
- when pairs disagree, alternative models are grown without the disagreeing pairs (so from other initial
  pairs) and the model that leaves the most views consistent, then explains the most matches, is kept;
- a view whose disagreeing pairs outweigh (in inliers) its agreeing ones is taken out of the model and
  reported not placed, with the reason;
- a two-view model is kept only when no other photo overlaps its views (one that does but cannot be
  placed with them gives no confirmation: a single pair can match wrongly, on symmetric or repeated
  structure), and without an EXIF focal only when its relative rotation hardly changes over the
  focals that explain the matches about as well as the best one (two views barely constrain the focal,
  and a wrong focal turns the relative rotation by tens of degrees).

Thresholds are angles (``SfMConfig.verify_rotation_deg``, ``verify_direction_deg``) and inlier counts, so
they mean the same on any scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon.errors import ReconError
from recon.matching.features import Features
from recon.priors.classical.config import SfMConfig
from recon.priors.classical.registration import best_model
from recon.priors.classical.sfm_model import SfMModel, rotation_change_deg
from recon.priors.classical.tracks import TrackSet
from recon.priors.classical.twoview import TwoView, essential_magsac, fundamental_from_poses, ray_angles_deg


@dataclass
class PairCheck:
    """How well the model's cameras i, j agree with the pair's own two-view geometry.

    Attributes:
        inliers: the pair's essential-matrix inliers at the model's focal (its weight as evidence).
        rotation_deg: angle between the model's and the pair's relative rotations.
        direction_deg: angle between the baseline directions; None when the pair's median triangulation
            angle is below ``cfg.verify_min_tri_angle_deg`` (the direction is then not determined).
    """

    i: int
    j: int
    inliers: int
    rotation_deg: float
    direction_deg: float | None
    agrees: bool


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-300)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def pair_checks(model: SfMModel, pairs: list[TwoView], feats: list[Features],
                cfg: SfMConfig) -> list[PairCheck]:
    """:class:`PairCheck` of every pair of ``pairs`` whose two views the model placed; each pair's relative
    pose is re-estimated from its matches at the model's focal (the one it was verified with may differ)."""
    out = []
    for p in pairs:
        if p.i not in model.w2c or p.j not in model.w2c or len(p.matches) < 5:
            continue
        xa, xb = feats[p.i].xy[p.matches[:, 0]], feats[p.j].xy[p.matches[:, 1]]
        cv2.setRNGSeed(0)
        _, R, t, inl = essential_magsac(xa, xb, model.K, model.thr, cfg.ransac_confidence,
                                        cfg.ransac_max_iters)
        if R is None or inl.sum() < cfg.min_inliers:
            continue  # the pair does not verify at this focal: it is no evidence either way
        wa, wb = model.w2c[p.i], model.w2c[p.j]
        R_m = wb[:3, :3] @ wa[:3, :3].T
        t_m = wb[:3, 3] - R_m @ wa[:3, 3]
        rot = rotation_change_deg(R_m, R)
        tri = float(np.median(ray_angles_deg(xa[inl], xb[inl], model.K, R, t)))
        direction = _angle_deg(t_m, t) if tri >= cfg.verify_min_tri_angle_deg else None
        agrees = rot <= cfg.verify_rotation_deg and (direction is None
                                                     or direction <= cfg.verify_direction_deg)
        out.append(PairCheck(p.i, p.j, int(inl.sum()), rot, direction, agrees))
    return out


def view_evidence(checks: list[PairCheck]) -> dict[int, dict]:
    """Per view: inliers and number of its agreeing and disagreeing pairs, and its worst disagreement."""
    ev: dict[int, dict] = {}
    for c in checks:
        for v, o in ((c.i, c.j), (c.j, c.i)):
            e = ev.setdefault(v, {"agree": 0, "disagree": 0, "n_agree": 0, "worst": None})
            if c.agrees:
                e["agree"] += c.inliers
                e["n_agree"] += 1
            else:
                e["disagree"] += c.inliers
                if e["worst"] is None or c.rotation_deg > e["worst"][1].rotation_deg:
                    e["worst"] = (o, c)
    return ev


def untrusted_views(checks: list[PairCheck], names: list[str]) -> dict[int, str]:
    """View -> reason, for the views whose disagreeing pairs outweigh their agreeing ones (in inliers)."""
    out = {}
    for v, e in view_evidence(checks).items():
        if e["disagree"] > e["agree"]:
            o, c = e["worst"]
            d = "" if c.direction_deg is None else f", baseline direction by {c.direction_deg:.0f} deg"
            out[v] = (f"its placement disagrees with its own two-view geometry with {names[o]} (rotation "
                      f"by {c.rotation_deg:.0f} deg{d}; {e['disagree']} inliers against, {e['agree']} for) "
                      "and no alternative model explains both: not placed rather than placed wrongly")
    return out


def geometric_support(model: SfMModel, pairs: list[TwoView], feats: list[Features]) -> int:
    """Descriptor matches of ``pairs`` (both views placed) within the RANSAC threshold (Sampson distance,
    pixels) of the epipolar geometry of the model's cameras: how much of the data the model explains."""
    total = 0
    for p in pairs:
        if p.i not in model.w2c or p.j not in model.w2c or not len(p.matches):
            continue
        F = fundamental_from_poses(model.K, model.w2c[p.i], model.w2c[p.j])
        xa = np.c_[feats[p.i].xy[p.matches[:, 0]], np.ones(len(p.matches))]
        xb = np.c_[feats[p.j].xy[p.matches[:, 1]], np.ones(len(p.matches))]
        Fa, Ftb = xa @ F.T, xb @ F
        num = (xb * Fa).sum(1) ** 2
        den = Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Ftb[:, 0] ** 2 + Ftb[:, 1] ** 2
        total += int((num / np.maximum(den, 1e-300) < model.thr**2).sum())
    return total


def trusted_model(
    verified: list[TwoView], feats: list[Features], tracks: TrackSet, n_views: int, connected: list[int],
    K: np.ndarray, thr: float, cfg: SfMConfig, refine_focal: bool, names: list[str],
) -> tuple[SfMModel, list[tuple[str, str, int]], dict]:
    """``best_model`` and, when some of its pairs disagree with it, alternatives grown without the
    disagreeing pairs (all of them, then each alone); keeps the model with the most views that its pairs
    do not contradict, then the most matches explained (``tracks``: those of all of ``verified``).
    Returns (model, initial pairs tried, info)."""
    model, tried = best_model(verified, tracks, n_views, connected, K, thr, cfg, refine_focal, names)
    checks = pair_checks(model, verified, feats, cfg)
    bad = [c for c in checks if not c.agrees]
    info: dict = {"disagreeing_pairs": [_describe(c, names) for c in bad], "alternatives": []}
    if not bad or cfg.verify_alternatives == 0:
        return model, tried, info

    def rank(m: SfMModel) -> tuple[int, int]:
        trusted = len(m.w2c) - len(untrusted_views(pair_checks(m, verified, feats, cfg), names))
        return trusted, geometric_support(m, verified, feats)

    best = (rank(model), model, tried)
    drops = [{(c.i, c.j) for c in bad}] + ([{(c.i, c.j)} for c in bad] if len(bad) > 1 else [])
    for drop in drops[: cfg.verify_alternatives]:
        sub = [p for p in verified if (p.i, p.j) not in drop]
        try:
            alt, alt_tried = best_model(sub, TrackSet(feats, [p for p in sub if p.e_inliers is not None],
                                                      2.0 * thr), n_views, connected, K, thr, cfg,
                                        refine_focal, names)
        except ReconError:
            continue
        r = rank(alt)
        info["alternatives"].append({"without": [[names[i], names[j]] for i, j in sorted(drop)],
                                     "trusted_views": r[0], "support": r[1]})
        if r > best[0]:
            best = (r, alt, alt_tried)
    info["chosen"] = {"trusted_views": best[0][0], "support": best[0][1]}
    return best[1], best[2], info


def _describe(c: PairCheck, names: list[str]) -> dict:
    return {"i": names[c.i], "j": names[c.j], "inliers": c.inliers, "rotation_deg": round(c.rotation_deg, 2),
            "direction_deg": None if c.direction_deg is None else round(c.direction_deg, 2)}


def focal_rotation_spread_deg(model: SfMModel, pair: TwoView, feats: list[Features], support: dict | None,
                              cfg: SfMConfig) -> float:
    """How far the pair's relative rotation turns over the focals that explain its matches about as well as
    the best one (``support`` from the focal sweep, ``cfg.focal_support``); 0 without a sweep."""
    if not support:
        return 0.0
    focals, sup = np.asarray(support["focals"]), np.asarray(support["support"])
    allowed = focals[sup >= cfg.focal_support * sup.max()]
    W, H = 2 * model.pp
    xa, xb = feats[pair.i].xy[pair.matches[:, 0]], feats[pair.j].xy[pair.matches[:, 1]]
    rots = []
    for f in (allowed.min(), model.focal, allowed.max()):
        cv2.setRNGSeed(0)
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
        _, R, _, _ = essential_magsac(xa, xb, K, model.thr, cfg.ransac_confidence, cfg.ransac_max_iters)
        if R is not None:
            rots.append(R)
    return max((rotation_change_deg(a, b) for a in rots for b in rots), default=0.0)


def confidence(checks: list[PairCheck], placed: list[int]) -> dict[int, float]:
    """Per placed view, in [0, 1]: the share of its pairs' inliers that agree with its placement, halved
    when a single pair supports it (nothing independent confirms that pair)."""
    ev = view_evidence(checks)
    out = {}
    for v in placed:
        e = ev.get(v, {"agree": 0, "disagree": 0, "n_agree": 0})
        share = e["agree"] / max(e["agree"] + e["disagree"], 1)
        out[v] = round(share * (1.0 if e["n_agree"] >= 2 else 0.5), 3)
    return out


def final_check(model: SfMModel, verified: list[TwoView], feats: list[Features], focal_source: str,
                focal_support: dict | None, cfg: SfMConfig, names: list[str]) -> dict:
    """Take the views no consistent model explains out of ``model`` (reported through ``model.failed_pnp``);
    raise ReconError when fewer than two trusted views remain, or two that nothing confirms (see the module
    docstring). Returns {"confidence": {name: value},
    "low_confidence": [names], "disagreeing_pairs": [...], "unplaced": {name: reason}}."""
    checks = pair_checks(model, verified, feats, cfg)
    bad = untrusted_views(checks, names)
    kept = sorted(v for v in model.w2c if v not in bad)
    others = sorted({v for p in verified for v in (p.i, p.j)} - set(kept))
    if len(kept) == 2 and others:
        raise ReconError(
            f"could not place the photos reliably: only {names[kept[0]]} and {names[kept[1]]} could be "
            f"placed, and {', '.join(names[v] for v in others)}, overlapping them, do not confirm their "
            "relative pose (a single pair of photos can match wrongly, e.g. on a symmetric or repeated "
            "structure); give more photos between them")
    if len(kept) == 2 and focal_source != "exif":
        a, b = kept
        pair = next((p for p in verified if (p.i, p.j) == (a, b)), None)
        spread = 0.0 if pair is None else focal_rotation_spread_deg(model, pair, feats, focal_support, cfg)
        if spread > cfg.verify_rotation_deg:
            reason = (f"with only {names[a]} and {names[b]} placed, the matches do not determine the focal "
                      f"length: over the focals they allow the relative rotation turns by {spread:.0f} deg")
            raise ReconError(f"could not place the photos reliably: {reason}; give a third overlapping "
                             "photo or photos with EXIF focal lengths")
    if len(model.w2c) - len(bad) < 2:
        raise ReconError("could not place the photos reliably: " + "; ".join(
            f"{names[v]}: {r}" for v, r in bad.items()))
    for v, reason in bad.items():
        model.unplace(v, reason)
    kept = [c for c in checks if c.i in model.w2c and c.j in model.w2c]
    conf = confidence(kept, sorted(model.w2c))
    return {"confidence": {names[v]: c for v, c in conf.items()},
            "low_confidence": [names[v] for v, c in conf.items() if c <= LOW_CONFIDENCE],
            "disagreeing_pairs": [_describe(c, names) for c in checks if not c.agrees],
            "unplaced": {names[v]: r for v, r in bad.items()}}


LOW_CONFIDENCE = 0.5
"""Views at or below this confidence are named in the log: a single pair, or contradicting pairs, place
them."""
