"""``recon eval``: the pose-free pipeline on the sparse training views of known-pose scenes, scored
against the reference poses and on held-out views.

Per scene: split (see :mod:`recon.eval.protocols`), reconstruct from the training images only (their
reference poses are removed before the pipeline sees the views), pose metrics of the training cameras
(Sim(3)-aligned; unregistered views count as 180-degree errors), then each test camera is initialised from
its reference pose aligned into the reconstruction's frame, refined against the frozen Gaussians, rendered
and scored.

A batch is resumable: each scene's row is written to ``OUT/<scene>/result.json`` (with the configuration
that produced it) as soon as the scene is done, and ``OUT/results.json``, ``results.md`` and
``report.html`` are rebuilt from those files. A rerun skips the scenes whose result has the same
configuration and no error (``force`` redoes them). With ``ray`` every scene is one task on a Ray cluster;
results are gathered as they finish and a failed task becomes that scene's error row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from recon.cameras import Cameras, camera_centers
from recon.config import ReconConfig
from recon.errors import ReconError
from recon.eval.config import EvalConfig
from recon.eval.protocols import make_split, read_split_file
from recon.eval.report import AUC_KEYS, mean_row, results_markdown, write_report_html
from recon.io.atomic import atomic_write_json, atomic_write_text
from recon.io.datasets import load_views
from recon.metrics import aligned_centers, camera_pose_metrics, match_cameras
from recon.outputs import to_jsonable, write_outputs
from recon.pipeline import evaluate_held_out, reconstruct
from recon.progress import StageLog
from recon.reconstruction import Reconstruction
from recon.views import Views

RESULT_FILE = "result.json"
EXECUTION_FIELDS = ("ray", "ray_address", "ray_cpus", "force")
"""EvalConfig fields that choose how scenes are run, not what they score: not part of a result's key."""


def _strip_poses(views: Views) -> Views:
    return dataclasses.replace(views, cameras=None)


def _mark_failed(row: dict, message: str, tb: str | None = None) -> dict:
    """Record a scene failure in ``row``: its error, and registered 0 / AUC 0 unless the scene got as far
    as its pose metrics (which are then kept)."""
    row["error"] = message
    row.setdefault("registered", 0)
    row.setdefault("auc", {t: 0.0 for t in AUC_KEYS})
    if tb:
        row["traceback"] = tb
    return row


def camera_centres_for_plot(est: Cameras, ref: Cameras) -> dict:
    """The data of the report's camera plot: reference centres (N, 3), the estimated centres after the
    similarity alignment (None for views not placed, all None with fewer than 2 placed) and the world up
    direction, the mean of the reference cameras' -y axes (OpenCV cameras: y points down)."""
    est_w2c, registered = match_cameras(est, ref)
    ref_w2c = ref.w2c.detach().double().cpu()
    estimated: list = [None] * len(ref)
    if int(registered.sum()) >= 2:
        aligned = aligned_centers(est_w2c[registered], ref_w2c[registered])
        for k, i in enumerate(torch.nonzero(registered).flatten().tolist()):
            estimated[i] = aligned[k].tolist()
    return {
        "names": list(ref.names),
        "reference": camera_centers(ref_w2c).tolist(),
        "estimated": estimated,
        "up": (-ref_w2c[:, 1, :3].mean(0)).tolist(),
    }


def evaluate_scene(scene: Path, out: Path, cfg: EvalConfig) -> dict:
    """Evaluate one scene and write its reconstruction into ``out/<scene name>``; returns its result row.

    Never raises for a scene-level failure: the row then has ``error`` (and ``traceback`` for an internal
    error), and keeps the pose metrics when the reconstruction succeeded before the failure.
    """
    scene = Path(scene)
    t0 = time.perf_counter()
    row: dict = {"scene": scene.name, "path": str(scene.resolve()), "views": cfg.views}
    # a line per stage, prefixed with the scene, so that a log shows where a long batch is
    log = StageLog(prefix=f"{scene.name}: ")
    try:
        with log.stage("load"):
            views = load_views(scene, max_side=cfg.max_side)
        if views.cameras is None:
            raise ReconError(f"{scene} has no reference poses; recon eval needs a known-pose dataset")
        split = make_split(views.names, views.source, cfg.views, cfg.split)
        row.update(views=len(split.train), protocol=split.protocol, train=split.train, test=split.test)
        train, test = views.subset(split.train), views.subset(split.test)
        rcfg = dataclasses.replace(cfg, poses="prior", test_every=0)
        recon = reconstruct(_strip_poses(train), rcfg, progress=True, log=log)
        poses = camera_pose_metrics(recon.cameras, train.cameras)
        timings = log.stages  # filled in as the stages below finish
        row.update(
            registered=poses["n_registered"],
            failed=recon.prior.failed if recon.prior else {},
            ate=poses["ate_frac"],
            ate_abs=poses["ate"],
            rre_deg=poses["rre_deg"],
            rte_deg=poses["rte_deg"],
            auc=poses["auc"],
            centers=camera_centres_for_plot(recon.cameras, train.cameras),
            timings=timings,
        )
        recon.metrics["poses"] = poses
        with log.stage("held-out pose fitting and scoring", f"{len(test)} views"):
            test_metrics, test_renders = _held_out(recon, train, test, rcfg)
        row.update(psnr=test_metrics["psnr"], ssim=test_metrics["ssim"], per_view=test_metrics["per_view"])
        recon.metrics["test"] = test_metrics
        if cfg.refine_effect:
            row["refine_effect"] = _refine_effect(recon, row, train, test, rcfg)
        with log.stage("export"):
            recon.metrics["timings"] = log.as_dict()
            write_outputs(recon, out / scene.name, config=rcfg,
                          renders={"test": (test.names, test_renders, test.images)})
        row["timings"] = log.as_dict()
    except ReconError as e:
        _mark_failed(row, str(e))
    except Exception as e:  # a bug must not lose the other scenes' results
        _mark_failed(row, f"internal error: {type(e).__name__}: {e}", traceback.format_exc())
    row["seconds"] = time.perf_counter() - t0
    return row


def _held_out(
    recon: Reconstruction, train: Views, test: Views, cfg: ReconConfig
) -> tuple[dict, torch.Tensor]:
    """Held-out scores and renders of ``test``, its reference cameras aligned on the placed training views."""
    return evaluate_held_out(recon, test, cfg, train.cameras.subset(recon.cameras.names))


def _score(
    recon: Reconstruction, train: Views, test: Views, cfg: ReconConfig
) -> tuple[dict, dict, torch.Tensor]:
    """Pose metrics of ``recon``'s training cameras against ``train``'s reference poses (unplaced views
    count as 180-degree errors) and held-out scores on ``test``; returns (poses, test metrics, renders)."""
    poses = camera_pose_metrics(recon.cameras, train.cameras)
    test_metrics, test_renders = _held_out(recon, train, test, cfg)
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


# --------------------------------------------------------------------------------------------------
# Batches: per-scene result files, resume, Ray
# --------------------------------------------------------------------------------------------------


def plain_config(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` as a plain :class:`EvalConfig` (e.g. from the CLI's subclass, which also holds the scene
    list): what a result depends on, and picklable for Ray workers without the CLI module."""
    return EvalConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig) if f.init})


def result_key(cfg: EvalConfig) -> dict:
    """The configuration a scene's result depends on, as JSON: every EvalConfig field except
    :data:`EXECUTION_FIELDS`, with a split file's content hash beside its path."""
    key = {f.name: to_jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(EvalConfig)
           if f.name not in EXECUTION_FIELDS}
    if cfg.split is not None:
        key["split"] = {"path": str(cfg.split),
                        "sha256": hashlib.sha256(Path(cfg.split).read_bytes()).hexdigest()}
    return json.loads(json.dumps(key))  # normalised as it reads back from a file (tuples -> lists)


def save_result(out: Path, row: dict, key: dict) -> None:
    """Write a scene's row and the configuration key that produced it to ``out/<scene>/result.json``."""
    atomic_write_json(Path(out) / row["scene"] / RESULT_FILE, {"config": key, "result": to_jsonable(row)})


def load_result(out: Path, scene: Path, key: dict) -> dict | None:
    """The row in ``out/<scene>/result.json`` when it was produced with ``key`` for this scene folder,
    else None (no file, unreadable, another configuration or another folder of the same name)."""
    try:
        saved = json.loads((Path(out) / Path(scene).name / RESULT_FILE).read_text())
        row = saved["result"]
        same = saved["config"] == key and row["path"] == str(Path(scene).resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return row if same else None


def write_summary(out: Path, scenes: list[Path], key: dict, report: bool = False) -> dict:
    """Rebuild ``out/results.json`` and ``results.md`` (and ``report.html`` with ``report``) from the
    per-scene result files of ``scenes`` that match ``key``; returns {"scenes": rows, "mean": ...}."""
    rows = [r for r in (load_result(out, s, key) for s in scenes) if r is not None]
    res = {"scenes": rows, "mean": mean_row(rows)}
    atomic_write_json(Path(out) / "results.json", res)
    atomic_write_text(Path(out) / "results.md", results_markdown(rows, res["mean"]))
    if report:
        write_report_html(rows, res["mean"], Path(out))
    return res


def _check_split(scene: Path, cfg: EvalConfig) -> None:
    """Raise the split's ReconError (naming the scene) before anything runs. A scene that cannot be loaded
    or has no reference poses is left for :func:`evaluate_scene` to report as failed."""
    try:
        views = load_views(scene, max_side=cfg.max_side)
    except ReconError:
        return
    if views.cameras is not None:
        try:
            make_split(views.names, views.source, cfg.views, cfg.split)
        except ReconError as e:
            raise ReconError(f"scene {scene.name}: {e}") from None


def _scene_task(scene: Path, out: Path, cfg: EvalConfig) -> dict:
    """One scene on a Ray worker, with as many torch threads as the CPUs Ray reserved for it; the row
    records which worker ran it (``worker``: host and process id)."""
    torch.set_num_threads(max(1, int(cfg.ray_cpus)))
    row = evaluate_scene(scene, out, cfg)
    row["worker"] = {"host": socket.gethostname(), "pid": os.getpid()}
    return row


def gather_ray(tasks: dict, finished: Callable[[Path, dict], None]) -> None:
    """Wait for Ray tasks ``{object ref: scene}`` and call ``finished(scene, row)`` as each one ends. A task
    that raised or whose worker died becomes the scene's error row; the other tasks go on."""
    import ray

    pending = list(tasks)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            scene = Path(tasks[ref])
            try:
                row = ray.get(ref)
            except Exception as e:  # ray.exceptions.RayError: the task raised, or its worker or node died
                first = (str(e).strip().splitlines() or [""])[0]
                row = _mark_failed({"scene": scene.name, "path": str(scene.resolve())},
                                   f"ray task failed: {type(e).__name__}: {first}", str(e))
            finished(scene, row)


def _run_on_ray(
    scenes: list[Path], out: Path, cfg: EvalConfig, finished: Callable[[Path, dict], None]
) -> None:
    """One task per scene on the current Ray cluster: the one this process is connected to, else
    ``cfg.ray_address`` / ``$RAY_ADDRESS`` / the latest local cluster, else a new local one (which is
    stopped at the end)."""
    try:
        import ray
    except ImportError:
        raise ReconError("--ray needs the 'dist' extra: pip install 'recon[dist]'") from None
    if cfg.ray_cpus <= 0:
        raise ReconError(f"--ray-cpus must be positive, got {cfg.ray_cpus}")
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = cfg.ray_address or "$RAY_ADDRESS or a local cluster"
            raise ReconError(f"cannot start or reach the Ray cluster ({where}): {e}") from None
    try:
        task = ray.remote(num_cpus=cfg.ray_cpus)(_scene_task)
        gather_ray({task.remote(s, out, cfg): s for s in scenes}, finished)
    finally:
        if started:
            ray.shutdown()


def run_eval(scenes: list[Path], out: Path, cfg: EvalConfig | None = None) -> dict:
    """Evaluate every scene (skipping those with a result of the same configuration in ``out`` unless
    ``cfg.force``) and write ``out/<scene>/result.json`` per scene as it is done, then ``results.json``,
    ``results.md`` and ``report.html``.

    Returns {"scenes": rows (in the order given), "mean": :func:`~recon.eval.report.mean_row`,
    "skipped": names of the scenes whose earlier result was reused}.

    Raises:
        ReconError: no scene, a missing folder, two scenes of the same name, or an unusable split (a bad
            ``--split`` file, or a protocol split without test images), before any scene runs.
    """
    cfg = plain_config(cfg or EvalConfig())
    out = Path(out)
    scenes = [Path(s) for s in scenes]
    if not scenes:
        raise ReconError("recon eval needs at least one scene folder (a dataset with reference poses)")
    for s in scenes:
        if not s.is_dir():
            raise ReconError(f"scene folder {s} does not exist")
    names = [s.name for s in scenes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReconError(f"scenes share a folder name ({', '.join(twice)}); their results would overwrite "
                         "each other in OUT/<name>")
    if cfg.split is not None:
        read_split_file(cfg.split)
    key = result_key(cfg)
    out.mkdir(parents=True, exist_ok=True)

    skipped = [] if cfg.force else [s.name for s in scenes
                                    if (r := load_result(out, s, key)) is not None and not r.get("error")]
    pending = [s for s in scenes if s.name not in skipped]
    for s in pending:
        _check_split(s, cfg)

    def finished(scene: Path, row: dict) -> None:
        save_result(out, row, key)
        write_summary(out, scenes, key)

    if pending and cfg.ray:
        _run_on_ray(pending, out, cfg, finished)
    else:
        for s in pending:
            finished(s, evaluate_scene(s, out, cfg))
    res = write_summary(out, scenes, key, report=True)
    res["skipped"] = skipped
    return res
