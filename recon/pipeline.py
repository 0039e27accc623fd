"""The Python API: ``reconstruct(views, config) -> Reconstruction`` and ``run(path, out, config)``.

Stages (one package each): io (views) -> priors (cameras + point maps) -> gaussians (initialisation) ->
optim (joint optimisation of Gaussians and poses) -> refine (stages) -> held-out views (optim.heldout) ->
outputs (files). The CLI (:mod:`recon.cli`) is a thin layer over :func:`run`.

What the options decide for the stages (``--poses dataset`` fixes the poses everywhere) is decided once,
in :func:`plan_stages`; mode combinations that cannot work are refused before any work
(:func:`check_modes`). The model stays on the working device from training through the held-out
evaluation; :func:`reconstruct` hands it back on the CPU.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from recon.cameras import Cameras
from recon.config import ReconConfig
from recon.errors import Interrupted, ReconError
from recon.gaussians.init import init_from_prior
from recon.interrupts import terminate_as_interrupt
from recon.metrics import camera_pose_metrics
from recon.optim.config import TrainConfig
from recon.optim.heldout import align_reference_cameras, evaluate_test_views, score_views
from recon.optim.trainer import TrainState, train
from recon.options import validate_options
from recon.priors.base import PriorResult
from recon.priors.factory import dense_prior_for_cameras, make_prior
from recon.progress import StageLog
from recon.reconstruction import Reconstruction
from recon.refine.base import RefineContext, Scene
from recon.refine.config import RefineConfig
from recon.refine.stages import build_stages, refine
from recon.render.gaussians import render_images
from recon.views import Views


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ReconError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def split_views(views: Views, test_every: int) -> tuple[Views, Views | None]:
    """Hold out views 0, K, 2K, ... (the LLFF protocol) when ``test_every`` = K > 0."""
    if test_every <= 0:
        return views, None
    test = [i for i in range(len(views)) if i % test_every == 0]
    train_ids = [i for i in range(len(views)) if i % test_every != 0]
    if len(train_ids) < 2:
        raise ReconError(f"--test-every {test_every} leaves fewer than 2 training views of {len(views)}")
    return views.subset(train_ids), views.subset(test)


@dataclass(frozen=True)
class StagePlan:
    """What the options decide for the stages (:func:`plan_stages`)."""

    fixed_poses: bool
    """``--poses dataset``: the dataset's cameras are the frame of the training and held-out views alike,
    so training does not move them, pose correction is off and held-out poses are not re-fitted."""
    train: TrainConfig
    refine: RefineConfig
    test_pose_iters: int
    """Pose-fitting steps of each held-out view against the frozen Gaussians (0: used as given)."""


def plan_stages(cfg: ReconConfig) -> StagePlan:
    """The stage configurations ``cfg`` implies; the one place that reads ``cfg.poses``."""
    fixed = cfg.poses == "dataset"
    rcfg = cfg.refine
    if cfg.diffusion_model is not None:
        diffusion = dataclasses.replace(rcfg.diffusion, model=cfg.diffusion_model)
        rcfg = dataclasses.replace(rcfg, diffusion=diffusion)
    if fixed:
        rcfg = dataclasses.replace(rcfg, poses=dataclasses.replace(rcfg.poses, enabled=False))
    train_cfg = dataclasses.replace(cfg.train, optimize_poses=False) if fixed else cfg.train
    return StagePlan(fixed, train_cfg, rcfg, 0 if fixed else cfg.test_pose_iters)


def check_modes(cfg: ReconConfig, views: Views, test_views: Views | None = None) -> None:
    """Refuse option combinations this input cannot satisfy, before any work (one-line ReconError):
    ``--poses dataset`` or held-out views (``--test-every``, ``test_views``) without reference poses."""
    where = views.root or "the input"
    fixed = plan_stages(cfg).fixed_poses
    if fixed and views.cameras is None:
        raise ReconError(f"--poses dataset needs a dataset with camera poses, but {where} is a plain image "
                         "folder; use --poses prior")
    if test_views is None and cfg.test_every <= 0:
        return
    if (test_views or views).cameras is None or (not fixed and views.cameras is None):
        raise ReconError(f"--test-every needs reference poses to place the held-out views, but {where} has "
                         "none (a plain image folder); drop --test-every")


def estimate_geometry(
    views: Views, cfg: ReconConfig, device: torch.device, log: StageLog | None = None
) -> PriorResult:
    """Cameras and point maps of the training views: from the prior, or the dataset's poses + dense stereo.

    Timed as stage "prior" in ``log``, with the prior's own sub-stages (``info["timings"]``, wall seconds)
    recorded beside it as "prior: <sub-stage>"."""
    log = log if log is not None else StageLog(verbose=False)
    with log.stage("prior"):
        result = _estimate_geometry(views, cfg, device)
    for name, wall in _prior_substages(result.info).items():
        log.add(f"prior: {name}", wall, None)
    return result


def _prior_substages(info: dict) -> dict[str, float]:
    t = (info.get("sfm") or {}).get("timings") or {}
    out = {k[: -len("_s")]: float(v) for k, v in t.items() if k.endswith("_s") and k != "total_s"}
    if "dense_s" in info:
        out["dense"] = float(info["dense_s"])
    return out


def _estimate_geometry(views: Views, cfg: ReconConfig, device: torch.device) -> PriorResult:
    if plan_stages(cfg).fixed_poses:
        check_modes(dataclasses.replace(cfg, test_every=0), views)
        return dense_prior_for_cameras(views, views.cameras, cfg.classical)
    prior = make_prior(cfg.prior, cfg.checkpoint, cfg.classical, cfg.learned, device)
    return prior(views)


def _training_views(views: Views, prior: PriorResult) -> Views:
    placed = prior.cameras.names
    if len(placed) < len(views):
        return views.subset(placed)
    return views


def reconstruct(
    views: Views,
    cfg: ReconConfig | None = None,
    *,
    prior: PriorResult | None = None,
    ckpt_dir: Path | None = None,
    resume: bool = False,
    callback: Callable[[TrainState], None] | None = None,
    progress: bool = True,
    log: StageLog | None = None,
) -> Reconstruction:
    """Reconstruct Gaussians and cameras from ``views`` (the training images); returned on the CPU.

    Args:
        views: training views (reference cameras in ``views.cameras`` are used only with poses="dataset").
        cfg: configuration; defaults to :class:`ReconConfig()`.
        prior: a precomputed geometry prior (skips that stage, e.g. when resuming).
        ckpt_dir: where the trainer keeps its checkpoints; ``resume`` continues from them.
        callback: called by the trainer with its state every few steps (the live viewer).
        progress: show progress (bars on a terminal, else a line per stage and every ~10% of training).
        log: where stage timings go (``metrics["timings"]``); a new one when None.
    """
    cfg = cfg or ReconConfig()
    recon = _reconstruct(views, cfg, prior, ckpt_dir, resume, callback, progress, log)
    return _on_cpu(recon)


def _on_cpu(recon: Reconstruction) -> Reconstruction:
    before = {k: (g.detach().to("cpu"), c.to("cpu")) for k, (g, c) in recon.refine_before.items()}
    return dataclasses.replace(recon, cameras=recon.cameras.to("cpu"),
                               gaussians=recon.gaussians.detach().to("cpu"), refine_before=before)


def _reconstruct(
    views: Views, cfg: ReconConfig, prior: PriorResult | None, ckpt_dir: Path | None, resume: bool,
    callback: Callable[[TrainState], None] | None, progress: bool, log: StageLog | None,
) -> Reconstruction:
    """:func:`reconstruct` with the model left on the working device."""
    device = resolve_device(cfg.device)
    log = log if log is not None else StageLog(verbose=progress)
    plan = plan_stages(cfg)
    if len(views) < 2:
        raise ReconError(f"need at least 2 views to reconstruct, got {len(views)}")
    if prior is None:
        prior = estimate_geometry(views, cfg, device, log)
    if len(prior.cameras) < 2:
        reasons = "; ".join(f"{k}: {v}" for k, v in prior.failed.items())
        raise ReconError(f"could place only {len(prior.cameras)} of {len(views)} views ({reasons})")
    for name, reason in prior.failed.items():
        log.say(f"view {name} not placed, left out: {reason}")
    if prior.failed:
        log.say(f"using {len(prior.cameras)} of {len(views)} views ({len(prior.failed)} not placed)")
    low, conf = prior.info.get("low_confidence") or [], prior.info.get("confidence") or {}
    if low:  # views the prior placed on weak evidence (see recon/priors/classical/verify.py)
        log.say("placed with low confidence (one pair of photos, or contradicting ones, place them): "
                + ", ".join(f"{n} ({conf.get(n, 0.0):.2f})" for n in low))
    train_views = _training_views(views, prior)
    with log.stage("init"):
        gaussians, init_stats = init_from_prior(prior, cfg.init)
    images = train_views.images.to(device)
    with log.stage("train"):
        result = train(gaussians.to(device), prior.cameras.to(device), images, plan.train,
                       ckpt_dir=ckpt_dir, resume=resume, callback=callback, progress=progress)
    ctx = RefineContext(images, plan.train, result.scene_extent, prior=prior, init_cfg=cfg.init,
                        progress=progress, callback=callback, log=print)
    with log.stage("refine"):
        refined = refine(Scene(result.gaussians, result.cameras), ctx, build_stages(plan.refine))
    with log.stage("render training views"), torch.no_grad():
        renders = render_images(refined.gaussians, refined.cameras, cfg.train.background)
        train_scores = score_views(renders.cpu(), train_views.images, train_views.names)
    metrics: dict = {
        "train": {"psnr": train_scores.psnr, "ssim": train_scores.ssim},
        "views": {"total": len(views), "registered": len(prior.cameras), "failed": prior.failed},
        "num_gaussians": len(refined.gaussians),
        "init": init_stats,
        "refine": refined.metrics,
        "prior": prior.info,
        "timings": log.as_dict(),
    }
    if views.cameras is not None and not plan.fixed_poses:
        # Against every given view, as recon eval scores: views the prior could not place count as
        # unregistered (180-degree errors), not left out.
        metrics["poses"] = {
            "prior": camera_pose_metrics(prior.cameras, views.cameras),
            "optimised": camera_pose_metrics(refined.cameras.to("cpu"), views.cameras),
        }
    return Reconstruction(cameras=refined.cameras, initial_cameras=prior.cameras, gaussians=refined.gaussians,
                          views=train_views, prior=prior, metrics=metrics, refine_before=refined.before)


def evaluate_held_out(
    recon: Reconstruction, test_views: Views, cfg: ReconConfig, ref_train: Cameras | None
) -> tuple[dict, torch.Tensor]:
    """Scores of held-out views and their renders (on the CPU); their reference cameras are brought into
    the reconstruction's frame.

    With dataset poses the frames coincide; with estimated poses a similarity is fitted between the
    reference cameras of the training views ``ref_train`` (same order as ``recon.cameras``) and the
    estimated ones, and each test pose is refined against the frozen Gaussians (``test_pose_iters`` steps).
    Pose fitting and rendering run on ``cfg.device`` (the model is moved there when it is not).
    """
    plan = plan_stages(cfg)
    if test_views.cameras is None:
        raise ReconError("held-out views need reference poses; this input has none (drop --test-every)")
    if plan.fixed_poses:
        cams = test_views.cameras
    else:
        if ref_train is None:
            raise ReconError("held-out views with estimated poses need the training views' reference poses")
        cams = align_reference_cameras(recon.cameras.to("cpu"), ref_train, test_views.cameras)
    device = resolve_device(cfg.device)
    scores, renders, _ = evaluate_test_views(
        recon.gaussians.to(device), cams, test_views.images.to(device), fit_pose_iters=plan.test_pose_iters,
        background=cfg.train.background,
    )
    return {"psnr": scores.psnr, "ssim": scores.ssim, "per_view": scores.per_view}, renders.cpu()


def run(
    path: Path | Views,
    out: Path,
    cfg: ReconConfig | None = None,
    *,
    test_views: Views | None = None,
    resume: bool = False,
    callback: Callable[[TrainState], None] | None = None,
    progress: bool = True,
    log: StageLog | None = None,
) -> Reconstruction:
    """Load ``path`` (an image folder or dataset, or ready ``Views``), reconstruct, evaluate held-out views,
    and write every output into ``out``.

    Before any work the options and the output folder are checked (:func:`check_output_folder`); after
    loading, the run manifest is the first file written to ``out``. With ``resume`` the run in ``out``
    continues from its cached prior and trainer checkpoint, provided its manifest matches this input and
    configuration (else :class:`ReconError` names what differs); a finished run is returned as it is.
    A run without ``resume`` drops the previous run's cache and checkpoint; its outputs replace the
    previous ones only once they are all written.

    Held-out views are every ``cfg.test_every``-th input view, or ``test_views`` when given (they need
    reference cameras in the same frame as the training views' references).

    Raises:
        ReconError: bad options, output folder or input, or a ``resume`` that would mix runs.
        Interrupted: SIGINT or SIGTERM; the prior is cached as soon as it is computed and training
            saves a checkpoint of its current step, and the message says what ``resume`` continues from.
    """
    from recon.io.datasets import load_views
    from recon.outdir import check_output_folder
    from recon.run_folder import build_manifest, clear_leftovers, clear_state, set_status, write_manifest

    cfg = cfg or ReconConfig()
    validate_options(cfg)
    resolve_device(cfg.device)
    out = Path(out)
    check_output_folder(out, None if isinstance(path, Views) else Path(path))
    t0 = time.perf_counter()
    log = log if log is not None else StageLog(verbose=progress)
    with terminate_as_interrupt(), log.stage("load"):  # SIGTERM stops it as Ctrl-C does
        views = path if isinstance(path, Views) else load_views(Path(path), max_side=cfg.max_side)
        check_modes(cfg, views, test_views)
        manifest = build_manifest(views, cfg)  # hashes the photos
    if test_views is None:
        train_views, test_views = split_views(views, cfg.test_every)
    else:
        train_views = views
    resume, previous = _previous_run(out, manifest, resume, log)
    if previous is not None:
        if previous.get("status") == "finished":
            log.say(f"the run in {out} is already finished: nothing to do (run without --resume to redo it)")
            return _finished_run(out, train_views, previous)
        manifest = previous | {"status": "running", "options": manifest["options"]}
    else:
        clear_state(out)
    clear_leftovers(out)
    created = not out.exists()
    write_manifest(out, manifest)
    try:
        with terminate_as_interrupt():
            recon = _run_stages(out, views, train_views, test_views, cfg, resume, callback, progress, log, t0)
    except KeyboardInterrupt as e:
        fields = ("step", "total", "checkpoint")
        kept = {k: getattr(e, k) for k in fields} if isinstance(e, Interrupted) else {}
        raise Interrupted(_interrupt_message(e, out, cfg, log), getattr(e, "signum", signal.SIGINT), **kept) \
            from None
    except ReconError as e:
        _discard_failed(out, manifest, created, str(e))
        raise
    set_status(out, manifest, "finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return recon


def _previous_run(out: Path, manifest: dict, resume: bool, log: StageLog) -> tuple[bool, dict | None]:
    """(resume, the manifest of the run in ``out`` to continue or None). Without a run to continue,
    ``resume`` becomes False; a run of another input or other options, or files of an unknown run, are
    refused (ReconError)."""
    from recon.run_folder import has_run_files, read_manifest, resume_mismatch

    previous = read_manifest(out) if resume else None
    if resume and previous is None:
        if has_run_files(out):
            raise ReconError(f"{out} holds no run manifest ({out / 'manifest.json'}): it was not written by "
                             "this version of recon; run without --resume to start over")
        log.say(f"nothing to resume in {out}: starting a new run")
        return False, None
    if previous is not None:
        reason = resume_mismatch(previous, manifest)
        if reason is not None:
            raise ReconError(f"cannot --resume the run in {out}: {reason}; use the same input and options, "
                             "or run without --resume to start over (or use another --out)")
    return resume, previous


def _run_stages(
    out: Path, views: Views, train_views: Views, test_views: Views | None, cfg: ReconConfig, resume: bool,
    callback: Callable[[TrainState], None] | None, progress: bool, log: StageLog, t0: float,
) -> Reconstruction:
    """The stages of :func:`run` once its manifest is written: prior (cached at once), reconstruction,
    held-out scoring, outputs (staged, then published over the previous run's)."""
    from recon.io.atomic import atomic_write_json
    from recon.optim.checkpoint import checkpoint_path
    from recon.outputs import to_jsonable, write_outputs
    from recon.priors.cache import save_prior
    from recon.run_folder import publish_outputs, staging_folder

    cache, ckpt_dir = out / "cache" / "prior.safetensors", out / "checkpoints"
    prior = _cached_prior(cache, train_views) if resume else None
    if resume:
        log.say(f"resuming the run in {out}: " + ("prior from its cache" if prior is not None
                                                  else "no cached prior yet, computing it"))
        if not checkpoint_path(ckpt_dir).is_file():
            log.say("no training checkpoint yet: training starts at step 0")
    if prior is None:
        prior = estimate_geometry(train_views, cfg, resolve_device(cfg.device), log)
        save_prior(cache, prior)  # at once: an interrupt from here on keeps it
    recon = _reconstruct(train_views, cfg, prior, ckpt_dir, resume, callback, progress, log)  # on the device
    with torch.no_grad():
        train_renders = render_images(recon.gaussians, recon.cameras, cfg.train.background).cpu()
    renders = {"train": (recon.views.names, train_renders, recon.views.images)}
    if test_views is not None:
        ref_train = None if train_views.cameras is None else train_views.cameras.subset(recon.cameras.names)
        with log.stage("held-out pose fitting and scoring"):
            recon.metrics["test"], test_renders = evaluate_held_out(recon, test_views, cfg, ref_train)
        renders["test"] = (test_views.names, test_renders, test_views.images)
        recon.metrics["views"]["held_out"] = len(test_views)
    recon = _on_cpu(recon)  # the outputs and the caller get it on the CPU
    recon.metrics["input"] = {"path": str(views.root), "format": views.source, "size": list(views.size)}
    staging = staging_folder(out)
    with log.stage("export"):
        write_outputs(recon, staging, config=cfg, renders=renders)
    recon.metrics["timings"] = log.as_dict()  # now with the export's own time
    recon.metrics["seconds"] = time.perf_counter() - t0
    atomic_write_json(staging / "metrics.json", to_jsonable(recon.metrics))
    publish_outputs(staging, out)
    return recon


def _cached_prior(cache: Path, train_views: Views) -> PriorResult | None:
    """The prior cached in ``cache`` (None when there is none), checked against the training views.

    Raises:
        ReconError: the file cannot be read or does not belong to these views.
    """
    from recon.priors.cache import load_prior

    if not cache.is_file():
        return None
    try:
        prior = load_prior(cache)
    except Exception as e:  # noqa: BLE001 - any damage means the same thing to the user
        raise ReconError(f"cannot read the cached prior {cache} ({type(e).__name__}); delete it to compute "
                         "it again, or run without --resume") from None
    unknown = [n for n in prior.cameras.names if n not in train_views.names]
    sizes_ok = bool((prior.cameras.sizes == torch.tensor(train_views.size)).all())
    if unknown or not sizes_ok:
        raise ReconError(f"the cached prior {cache} does not belong to these photos; delete it to compute it "
                         "again, or run without --resume")
    return prior


def _finished_run(out: Path, train_views: Views, manifest: dict) -> Reconstruction:
    """The reconstruction a finished run in ``out`` published, read back from its files."""
    import json

    from recon.gaussians.ply import load_ply
    from recon.io.cameras_json import load_cameras_json

    try:
        cameras, initial = load_cameras_json(out / "cameras.json")
        gaussians = load_ply(out / "point_cloud.ply")
        metrics = json.loads((out / "metrics.json").read_text())
        views = train_views.subset(cameras.names)
    except (ReconError, OSError, ValueError, KeyError) as e:
        raise ReconError(f"the run in {out} is marked finished but its outputs are damaged ({e}); run "
                         "without --resume to redo it") from None
    cache = out / "cache" / "prior.safetensors"
    prior = _cached_prior(cache, train_views)
    return Reconstruction(cameras=cameras, initial_cameras=initial if initial is not None else cameras,
                          gaussians=gaussians, views=views, prior=prior, metrics=metrics)


def _interrupt_message(e: KeyboardInterrupt, out: Path, cfg: ReconConfig, log: StageLog) -> str:
    """One line: where the run was stopped and what ``--resume`` continues from."""
    from recon.optim.checkpoint import checkpoint_step

    how = e.signal_name if isinstance(e, Interrupted) else "Ctrl-C"
    stage = log.current or "start-up"
    if isinstance(e, Interrupted) and e.checkpoint and stage == "train":
        return (f"interrupted ({how}) at training step {e.step} of {e.total}; checkpoint saved in "
                f"{out / 'checkpoints'}: --resume continues from step {e.step}")
    step = checkpoint_step(out / "checkpoints")
    if step is not None:
        done = step >= cfg.train.iters
        then = " (training was done: refinement, scoring and export run again)" if done else ""
        kept = f"--resume continues from the training checkpoint at step {step} of {cfg.train.iters}{then}"
    elif (out / "cache" / "prior.safetensors").is_file():
        kept = "--resume continues from the cached prior (training starts at step 0)"
    else:
        kept = "nothing was saved yet: --resume starts from the beginning"
    return f"interrupted ({how}) during {stage}; {kept}"


def _discard_failed(out: Path, manifest: dict, created: bool, error: str) -> None:
    """After a user error: a folder this run created and that holds nothing but the manifest is removed
    (no empty output folder); otherwise the manifest records the failure."""
    import shutil

    from recon.run_folder import set_status

    leftovers = [p for p in out.iterdir() if p.name not in ("manifest.json", "cache", "checkpoints")] \
        if out.is_dir() else []
    state = [p for p in (out / "cache", out / "checkpoints") if p.exists() and any(p.iterdir())]
    if created and not leftovers and not state:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():
        set_status(out, manifest, "failed", error=error)
