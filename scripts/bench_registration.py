"""Can a placed view be trusted? The classical prior's SfM beside COLMAP on many real view subsets.

For each shared scene (``../shared/data``: llff_fern, strecha_fountain-P11, middlebury_templeSparseRing,
dtu_scan24_monosdf) a fixed, seeded set of view subsets is drawn: triplets whose spread (the largest
angle between two of their viewing directions) ranges from the scene's narrowest to its widest, one per
equal-width band of spread, plus a few 5-view subsets drawn the same way. Each subset
runs through

- ours: the classical prior's structure from motion alone (``run_sfm``, what ``ClassicalPrior`` calls
  before dense stereo; stereo places no view), with its default options;
- COLMAP: pycolmap's SIFT extraction (one shared SIMPLE_RADIAL camera), exhaustive matching and
  incremental mapping, in a temporary folder; the largest model is kept, views outside it are not placed.

Both get the same images at a long side of at most ``--max-side`` pixels (default 384).

Scoring (pairwise errors from ``recon.metrics.relative_pose_errors``, so invariant to the world frame
and scale): a pair of placed views agrees with the reference when its relative rotation error is below
5 degrees and its translation-direction error below 10. The largest set of placed views whose pairs all
agree (at least two views; ties: the smallest summed error) is placed *correctly*. Any other placed view is
placed *wrongly* when even its best pair with a correct view (or with any placed view, if none is correct)
is off by more than 15 degrees (rotation or direction), else *inaccurate*. AUC@15 is the mAA of
max(RRE, RTE) over every pair of every subset, a pair with an unplaced view counting as 180 degrees.

    python scripts/bench_registration.py                       # tables (about 25 minutes on 2 CPUs)
    python scripts/bench_registration.py --json > /tmp/b.json  # one JSON object, per subset too
    python scripts/bench_registration.py --scenes llff_fern --per-scene 4 --no-colmap
    python scripts/bench_registration.py --write README.md     # the summary table between its markers
    python scripts/bench_registration.py --load /tmp/b.json --write README.md  # from a saved run
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

SCENES = ("llff_fern", "strecha_fountain-P11", "middlebury_templeSparseRing", "dtu_scan24_monosdf")
CORRECT_ROT_DEG, CORRECT_DIR_DEG, WRONG_DEG = 5.0, 10.0, 15.0
START, END = "<!-- bench-registration:start -->", "<!-- bench-registration:end -->"


@dataclass
class BenchConfig:
    """What to run."""

    scenes: tuple[str, ...] = SCENES
    """Scenes (folders of ``--data``)."""
    data: Path = REPO.parent / "shared" / "data"
    per_scene: int = 10
    """Subsets per scene: a fifth of them (at least one, from 5 up) 5-view subsets, the rest triplets."""
    max_side: int = 384
    """Long side (px) of the images both methods get (never upscaled)."""
    seed: int = 0
    colmap: bool = True
    """Also run COLMAP (pycolmap, the ``bench`` extra) on every subset."""
    json: bool = False
    """Print one JSON object (summary and every subset) instead of tables."""
    load: Path | None = None
    """Summarise the subsets of a saved ``--json`` output instead of running (e.g. with ``--write``)."""
    write: Path | None = None
    """Also put the summary table into this markdown file between ``<!-- bench-registration:start -->``
    and ``<!-- bench-registration:end -->``."""


# --------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------


def spread_deg(w2c: np.ndarray) -> float:
    """Largest angle (degrees) between the viewing directions (optical axes) of (N, 4, 4) w2c."""
    z = w2c[:, 2, :3]
    return float(np.degrees(np.arccos(np.clip((z @ z.T).min(), -1.0, 1.0))))


def draw_subsets(w2c: np.ndarray, per_scene: int, seed: int) -> list[tuple[int, ...]]:
    """``per_scene`` view subsets of a scene with reference cameras w2c (N, 4, 4): triplets, then 5-view
    subsets (a fifth, at least one from 5 subsets up), one from each of equal-width bands of spread
    between the narrowest and the widest."""
    rng = np.random.default_rng(seed)
    n = len(w2c)
    n_five = (max(1, per_scene // 5) if per_scene >= 5 else 0) if n >= 5 else 0
    out: list[tuple[int, ...]] = []
    for size, count in ((3, per_scene - n_five), (5, n_five)):
        if count <= 0:
            continue
        cands = list(itertools.combinations(range(n), size))
        if len(cands) > 4000:
            cands = sorted({tuple(sorted(rng.choice(n, size, replace=False).tolist())) for _ in range(4000)})
        spread = np.array([spread_deg(w2c[list(c)]) for c in cands])
        edges = np.linspace(spread.min(), spread.max(), count + 1)
        for lo, hi in itertools.pairwise(edges):
            band = np.flatnonzero((spread >= lo) & (spread <= hi))
            if len(band) == 0:  # no subset in this band: the one nearest to its middle
                band = [int(np.argmin(np.abs(spread - (lo + hi) / 2)))]
            out.append(cands[int(rng.choice(band))])
    return out


# --------------------------------------------------------------------------------------------------
# The two methods: each returns {name: w2c (4, 4)} of the views it placed and notes
# --------------------------------------------------------------------------------------------------


_FEATURES: dict[tuple, tuple[object, float]] = {}
"""Features per (image bytes, options) -> (features, seconds it took): an image recurs in many subsets and
its features do not depend on the others, so they are computed once; each use is charged the full time."""


@contextlib.contextmanager
def _cached_features():
    """Patch the SfM driver's ``detect_features`` with a cache; yields a list that collects the seconds
    the cached calls would have taken."""
    import recon.priors.classical.sfm as sfm_module

    original = sfm_module.detect_features
    saved: list[float] = []

    def detect(image, *args):
        key = (zlib.crc32(np.ascontiguousarray(image).tobytes()), image.shape, args)
        if key in _FEATURES:
            saved.append(_FEATURES[key][1])
        else:
            t0 = time.perf_counter()
            _FEATURES[key] = (original(image, *args), time.perf_counter() - t0)
        return _FEATURES[key][0]

    sfm_module.detect_features = detect
    try:
        yield saved
    finally:
        sfm_module.detect_features = original


def run_ours(views) -> tuple[dict[str, np.ndarray], dict]:
    from recon.errors import ReconError
    from recon.priors.classical.config import SfMConfig
    from recon.priors.classical.sfm import run_sfm

    with _cached_features() as saved:
        try:
            sfm = run_sfm(views, SfMConfig())
        except ReconError as e:
            return {}, {"error": str(e), "cached_features_s": sum(saved)}
    placed = {n: sfm.cameras.w2c[k].double().numpy() for k, n in enumerate(sfm.cameras.names)}
    notes = {"failed": dict(sfm.failed), "cached_features_s": sum(saved),
             "timings": sfm.info.get("timings", {})}
    if "confidence" in sfm.info:
        notes["confidence"] = sfm.info["confidence"]
    return placed, notes


def run_colmap(views, work: Path) -> tuple[dict[str, np.ndarray], dict]:
    import imageio.v3 as iio
    import pycolmap

    images = work / "images"
    images.mkdir(parents=True)
    names = {}
    for k, (name, im) in enumerate(zip(views.names, views.images, strict=True)):
        names[f"{k:03d}.png"] = name
        iio.imwrite(images / f"{k:03d}.png", (im.numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    threads = min(2, os.cpu_count() or 1)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = threads
    db = work / "database.db"
    cpu = pycolmap.Device.cpu
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=cpu)
    pycolmap.match_exhaustive(db, matching_options=matching, device=cpu)
    models = pycolmap.incremental_mapping(db, images, work / "sparse", mapping)
    if not models:
        return {}, {"error": "no model"}
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    placed = {}
    for image in rec.images.values():
        if not image.has_pose:
            continue
        pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        w2c = np.eye(4)
        w2c[:3] = pose.matrix()
        placed[names[image.name]] = w2c
    return placed, {"models": len(models)}


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_subset(placed: dict[str, np.ndarray], names: list[str], ref_w2c: np.ndarray) -> dict:
    """Per view of ``names`` (reference w2c (N, 4, 4), same order) "correct" / "wrong" / "inaccurate" /
    "not placed" (see the module docstring), and max(RRE, RTE) per pair for the AUC."""
    from recon.metrics import relative_pose_errors

    n = len(names)
    est = np.stack([placed.get(nm, np.eye(4)) for nm in names])
    pairs, rre, rte = relative_pose_errors(torch.from_numpy(est), torch.from_numpy(ref_w2c))
    ok = [nm in placed for nm in names]
    err, agree = np.full((n, n), 180.0), np.zeros((n, n), bool)
    for (a, b), r, t in zip(pairs.tolist(), rre.tolist(), rte.tolist(), strict=True):
        if ok[a] and ok[b]:
            err[a, b] = err[b, a] = max(r, t)
            agree[a, b] = agree[b, a] = r < CORRECT_ROT_DEG and t < CORRECT_DIR_DEG
    placed_idx = [k for k in range(n) if ok[k]]
    best: tuple[int, float, tuple[int, ...]] = (0, 0.0, ())
    for size in range(2, len(placed_idx) + 1):
        for s in itertools.combinations(placed_idx, size):
            if all(agree[a, b] for a, b in itertools.combinations(s, 2)):
                total = sum(err[a, b] for a, b in itertools.combinations(s, 2))
                if size > best[0] or (size == best[0] and total < best[1]):
                    best = (size, total, s)
    correct = set(best[2])
    status = []
    for k in range(n):
        if not ok[k] or len(placed_idx) < 2:
            status.append("not placed")
        elif k in correct:
            status.append("correct")
        else:
            others = [j for j in (correct or set(placed_idx)) if j != k]
            status.append("wrong" if min(err[k, j] for j in others) > WRONG_DEG else "inaccurate")
    pair_err = [float(err[a, b]) for a, b in pairs.tolist()]
    return {"views": names, "status": status, "pair_err_deg": pair_err}


def summarize(rows: list[dict], method: str) -> dict:
    from recon.metrics import pose_auc

    status = [s for r in rows for s in r[method]["status"]]
    errs = torch.tensor([e for r in rows for e in r[method]["pair_err_deg"]], dtype=torch.float64)
    n = max(len(status), 1)
    return {"views": len(status), "correct": status.count("correct") / n, "wrong": status.count("wrong"),
            "inaccurate": status.count("inaccurate"), "not_placed": status.count("not placed"),
            "auc15": pose_auc(errs, 15) if len(errs) else None,
            "seconds": sum(r[method]["seconds"] for r in rows)}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def bench_scene(scene: str, cfg: BenchConfig, log) -> list[dict]:
    from recon.io.datasets import load_views

    views = load_views(cfg.data / scene, max_side=cfg.max_side)
    assert views.cameras is not None, f"{scene} has no reference cameras"
    ref = views.cameras.w2c.double().numpy()
    subsets = draw_subsets(ref, cfg.per_scene, cfg.seed + zlib.crc32(scene.encode()))
    rows = []
    for k, idx in enumerate(subsets):
        sub = views.subset(list(idx))
        row = {"scene": scene, "subset": list(idx), "names": sub.names,
               "spread_deg": spread_deg(ref[list(idx)])}
        methods = [("ours", run_ours)] + ([("colmap", None)] if cfg.colmap else [])
        for method, fn in methods:
            t0 = time.perf_counter()
            if fn is None:
                with tempfile.TemporaryDirectory(prefix="bench-colmap-") as tmp:
                    placed, notes = run_colmap(sub, Path(tmp))
            else:
                placed, notes = fn(sub)
            scored = score_subset(placed, sub.names, ref[list(idx)])
            seconds = time.perf_counter() - t0 + notes.get("cached_features_s", 0.0)
            row[method] = dict(scored, seconds=seconds, **notes)
        log(f"[{scene} {k + 1}/{len(subsets)}] views {list(idx)} spread {row['spread_deg']:.0f} deg: "
            + "; ".join(f"{m} {_counts(row[m]['status'])} {row[m]['seconds']:.0f} s" for m, _ in methods))
        rows.append(row)
    return rows


def _counts(status: list[str]) -> str:
    return "/".join(str(status.count(s)) for s in ("correct", "inaccurate", "wrong", "not placed"))


def _fmt_row(label: str, s: dict | None) -> list[str]:
    if s is None:
        return ["-"] * 6
    auc = "-" if s["auc15"] is None else f"{s['auc15']:.3f}"
    return [f"{100 * s['correct']:.0f}%", str(s["inaccurate"]), str(s["wrong"]), str(s["not_placed"]), auc,
            f"{s['seconds']:.0f}"]


def table(summary: dict, cfg: BenchConfig) -> str:
    head = ("| scene | subsets / views | ours: correct | 5-15 deg | wrong | not placed | AUC@15 | s "
            "| COLMAP: correct | 5-15 deg | wrong | not placed | AUC@15 | s |")
    lines = [head, "|" + "---|" * 14]
    for scene, s in summary.items():
        cells = [scene, f"{s['subsets']} / {s['ours']['views']}", *_fmt_row("ours", s["ours"]),
                 *_fmt_row("colmap", s.get("colmap"))]
        lines.append("| " + " | ".join(cells) + " |")
    cmd = "python scripts/bench_registration.py" + (f" --per-scene {cfg.per_scene}" * (cfg.per_scene != 10))
    lines += ["", f"(`{cmd}`, one run, images at a long side of at most {cfg.max_side} px, "
                  f"{os.cpu_count()} CPUs; correct: every pair with the other correct views within "
                  f"{CORRECT_ROT_DEG:.0f} deg rotation and {CORRECT_DIR_DEG:.0f} deg translation direction; "
                  f"wrong: off by more than {WRONG_DEG:.0f} deg)"]
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if cfg.load is not None:
        saved = json.loads(cfg.load.read_text())
        cfg.max_side, cfg.per_scene = saved["config"]["max_side"], saved["config"]["per_scene"]
        cfg.colmap = all("colmap" in r for r in saved["subsets"])
    elif cfg.colmap:
        import pycolmap

        pycolmap.logging.minloglevel = 2  # errors only: COLMAP logs every step
    rows = saved["subsets"] if cfg.load is not None else []
    for scene in cfg.scenes if cfg.load is None else ():
        if not (cfg.data / scene).is_dir():
            log(f"{scene}: not found under {cfg.data}, skipped")
            continue
        with contextlib.redirect_stdout(sys.stderr):
            rows += bench_scene(scene, cfg, log)
    methods = ["ours"] + (["colmap"] if cfg.colmap else [])
    summary = {}
    for scene in [*dict.fromkeys(r["scene"] for r in rows), "overall"]:
        mine = [r for r in rows if scene in ("overall", r["scene"])]
        summary[scene] = {"subsets": len(mine), **{m: summarize(mine, m) for m in methods}}
    out = {"config": {"max_side": cfg.max_side, "per_scene": cfg.per_scene, "seed": cfg.seed,
                      "cpus": os.cpu_count()}, "summary": summary, "subsets": rows}
    text = table(summary, cfg)
    if cfg.write is not None:
        from results_to_readme import replace_block

        from recon.io.atomic import atomic_write_text

        atomic_write_text(cfg.write, replace_block(cfg.write.read_text(), text, START, END))
    print(json.dumps(out, indent=1) if cfg.json else text)
    return out


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
