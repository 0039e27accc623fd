"""``recon eval``: the pose-free pipeline on the sparse training views of known-pose scenes, scored
against the reference poses and on held-out views; results in ``OUT/results.json`` and ``results.md``.

Per scene: split (see :mod:`recon.eval.protocols`), reconstruct from the training images only (their
reference poses are removed before the pipeline sees the views), pose metrics of the training cameras
(Sim(3)-aligned; unregistered views count as 180-degree errors), then each test camera is initialised from
its reference pose aligned into the reconstruction's frame, refined against the frozen Gaussians, rendered
and scored.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from pathlib import Path

import torch

from recon.errors import ReconError
from recon.eval.config import EvalConfig
from recon.eval.metrics import pose_metrics
from recon.eval.protocols import make_split
from recon.io.atomic import atomic_write_json, atomic_write_text
from recon.io.datasets import load_views
from recon.io.export import to_jsonable, write_outputs
from recon.pipeline import ReconConfig, evaluate_held_out, reconstruct
from recon.reconstruction import Reconstruction
from recon.views import Views

NUMERIC_KEYS = ["registered", "psnr", "ssim", "ate", "rre_deg", "rte_deg", "seconds"]


def _strip_poses(views: Views) -> Views:
    return dataclasses.replace(views, cameras=None)


def evaluate_scene(scene: Path, out: Path, cfg: EvalConfig) -> dict:
    """Evaluate one scene; never raises for a scene-level failure (it is reported in the row)."""
    t0 = time.perf_counter()
    row: dict = {"scene": scene.name, "views": cfg.views}
    try:
        views = load_views(scene, max_side=cfg.max_side)
        if views.cameras is None:
            raise ReconError(f"{scene} has no reference poses; recon eval needs a known-pose dataset")
        split = make_split(views.names, views.source, cfg.views, cfg.split)
        train, test = views.subset(split.train), views.subset(split.test)
        rcfg = dataclasses.replace(cfg, poses="prior", test_every=0)
        recon = reconstruct(_strip_poses(train), rcfg, progress=False)
        poses, test_metrics, test_renders = _score(recon, train, test, rcfg)
        row.update(
            registered=poses["n_registered"],
            failed=recon.prior.failed if recon.prior else {},
            ate=poses["ate_frac"],
            ate_abs=poses["ate"],
            rre_deg=poses["rre_deg"],
            rte_deg=poses["rte_deg"],
            auc=poses["auc"],
            protocol=split.protocol,
            train=split.train,
            psnr=test_metrics["psnr"],
            ssim=test_metrics["ssim"],
        )
        recon.metrics["test"] = test_metrics
        recon.metrics["poses"] = poses
        if cfg.refine_effect:
            row["refine_effect"] = _refine_effect(recon, row, train, test, rcfg)
        write_outputs(recon, out / scene.name, config=rcfg,
                      renders={"test": (test.names, test_renders, test.images)})
    except ReconError as e:
        row.update(error=str(e), registered=0, auc={"5": 0.0, "15": 0.0, "30": 0.0})
    except Exception as e:  # a bug must not lose the other scenes' results
        row.update(error=f"internal error: {type(e).__name__}: {e}", registered=0,
                   auc={"5": 0.0, "15": 0.0, "30": 0.0}, traceback=traceback.format_exc())
    row["seconds"] = time.perf_counter() - t0
    return row


def _score(
    recon: Reconstruction, train: Views, test: Views, cfg: ReconConfig
) -> tuple[dict, dict, torch.Tensor]:
    """Pose metrics of ``recon``'s training cameras against ``train``'s reference poses (unplaced views
    count as 180-degree errors) and held-out scores on ``test``; returns (poses, test metrics, renders)."""
    placed = recon.cameras.names
    est = torch.eye(4).repeat(len(train), 1, 1)
    mask = torch.zeros(len(train), dtype=torch.bool)
    for i, name in enumerate(train.names):
        if name in placed:
            est[i] = recon.cameras.w2c[placed.index(name)]
            mask[i] = True
    poses = pose_metrics(est, train.cameras.w2c, mask)
    test_metrics, test_renders = evaluate_held_out(recon, test, cfg, train.cameras.subset(placed))
    return poses, test_metrics, test_renders


def _refine_effect(recon: Reconstruction, row: dict, train: Views, test: Views, cfg: ReconConfig) -> dict:
    """Per refinement stage that ran: the scores without it (the scene before it) and with it (the state
    after it), so each stage's own contribution shows. A stage that changed nothing is not re-scored."""
    keys = ("psnr", "ssim", "rre_deg", "rte_deg")
    stages = list(recon.refine_before)
    states = [recon.refine_before[s] for s in stages] + [(recon.gaussians, recon.cameras)]
    scores: list[dict] = [{}] * len(states)
    scores[-1] = {k: row[k] for k in keys}
    changed = [True] * len(stages)
    for n in range(len(stages) - 1, -1, -1):
        (g, cams), (g_next, cams_next) = states[n], states[n + 1]
        if g.means.shape == g_next.means.shape and torch.equal(g.means, g_next.means) and torch.equal(
            cams.w2c, cams_next.w2c
        ):
            scores[n] = scores[n + 1]
            changed[n] = False
            continue
        poses, tm, _ = _score(dataclasses.replace(recon, gaussians=g, cameras=cams), train, test, cfg)
        scores[n] = {"psnr": tm["psnr"], "ssim": tm["ssim"], "rre_deg": poses["rre_deg"],
                     "rte_deg": poses["rte_deg"]}
    effect: dict = {}
    for n, stage in enumerate(stages):
        without, with_ = scores[n], scores[n + 1]
        effect[stage] = {
            "changed": changed[n],
            "without": without,
            "with": with_,
            "delta": {k: with_[k] - without[k] for k in keys
                      if isinstance(with_[k], float) and isinstance(without[k], float)},
        }
    refine_metrics = recon.metrics.get("refine", {})
    for stage in ("poses", "diffusion"):
        if stage not in effect:
            effect[stage] = {"skipped": (refine_metrics.get(stage) or {}).get("skipped", "did not run")}
    return effect


def mean_row(rows: list[dict]) -> dict:
    mean: dict = {}
    for k in NUMERIC_KEYS:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        mean[k] = sum(vals) / len(vals) if vals else None
    mean["auc"] = {t: sum(r["auc"][t] for r in rows) / len(rows) for t in ("5", "15", "30")} if rows else {}
    return mean


def results_markdown(rows: list[dict], mean: dict) -> str:
    def f(v, p=2):
        return "n/a" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))

    lines = [
        "| scene | views | registered | PSNR | SSIM | ATE (frac) | RRE (deg) | RTE (deg) "
        "| AUC@5 | AUC@15 | AUC@30 | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + [dict(mean, scene="**mean**", views="")]:
        auc = r.get("auc", {})
        note = r.get("error", "") or "; ".join(f"{k}: {v}" for k, v in (r.get("failed") or {}).items())
        lines.append(
            f"| {r['scene']} | {r.get('views', '')} | {f(r.get('registered'))} | {f(r.get('psnr'))} "
            f"| {f(r.get('ssim'), 3)} | {f(r.get('ate'), 4)} | {f(r.get('rre_deg'))} | {f(r.get('rte_deg'))} "
            f"| {f(auc.get('5'), 3)} | {f(auc.get('15'), 3)} | {f(auc.get('30'), 3)} "
            f"| {f(r.get('seconds'), 0)} | {note} |"
        )
    effect_rows = [r for r in rows if r.get("refine_effect")]
    if effect_rows:
        lines += [
            "",
            "Refinement stages, each with and without (the scene before the stage):",
            "",
            "| scene | stage | PSNR without | PSNR with | dPSNR | RRE without | RRE with | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in effect_rows:
            for stage, e in r["refine_effect"].items():
                if "skipped" in e:
                    lines.append(f"| {r['scene']} | {stage} | | | | | | skipped: {e['skipped']} |")
                    continue
                wo, w = e["without"], e["with"]
                note = "" if e["changed"] else "changed nothing"
                lines.append(
                    f"| {r['scene']} | {stage} | {f(wo['psnr'])} | {f(w['psnr'])} "
                    f"| {f(e['delta'].get('psnr'))} | {f(wo['rre_deg'])} | {f(w['rre_deg'])} | {note} |"
                )
    return "\n".join(lines) + "\n"


def run_eval(scenes: list[Path], out: Path, cfg: EvalConfig | None = None) -> dict:
    """Evaluate every scene and write OUT/results.json and OUT/results.md (also after each scene, so a
    long batch that is interrupted keeps what it finished)."""
    cfg = cfg or EvalConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        if not Path(s).is_dir():
            raise ReconError(f"scene folder {s} does not exist")
    rows: list[dict] = []

    def write() -> dict:
        res = {"scenes": rows, "mean": mean_row(rows)}
        atomic_write_json(out / "results.json", to_jsonable(res))
        atomic_write_text(out / "results.md", results_markdown(rows, res["mean"]))
        return res

    if cfg.ray:
        try:
            import ray
        except ImportError:
            raise ReconError("--ray needs the 'dist' extra: pip install 'recon[dist]'") from None
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(evaluate_scene)
        rows.extend(ray.get([remote.remote(Path(s), out, cfg) for s in scenes]))
        return write()
    for s in scenes:
        rows.append(evaluate_scene(Path(s), out, cfg))
        res = write()
    return res
