"""The one training loop: joint optimisation of Gaussians and camera poses against target views (3DGS-style,
with InstantSplat's pose refinement), as a :class:`Trainer` and the thin :func:`train` around it.

Every optimisation of Gaussians or poses in recon is a configuration of :class:`Trainer`: the main
training (:func:`train`), held-out pose fitting (:func:`recon.optim.pose.fit_poses`: Gaussians frozen,
poses free) and the diffusion stage's pseudo-view fine-tuning (:mod:`recon.refine.diffusion`: poses
frozen, extra weighted views, uniform view draws, its own position learning-rate curve).

Poses: each camera has a 6-vector delta ``(v / extent, omega)`` and ``w2c = se3_exp(xi) @ w2c_ref`` with
``xi = (extent * v, omega)`` (CONVENTIONS: left-multiplied se(3) on w2c, reference pose kept). Scaling
the translation by the scene extent makes one learning rate mean the same for rotation (radians) and
translation (fractions of the scene) in every scene.

Determinism: every random choice (view order, crops, splits) comes from one ``torch.Generator`` seeded
with ``TrainConfig.seed`` whose state is part of :meth:`Trainer.state_dict`, and learning rates are pure
functions of the step, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recon.cameras import Cameras
from recon.errors import Interrupted, ReconError
from recon.gaussians import Gaussians
from recon.interrupts import deferred_interrupts
from recon.metrics import psnr_per_image
from recon.optim.batches import ViewSampler, _random_crop, check_inputs, image_pyramid
from recon.optim.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from recon.optim.config import TrainConfig
from recon.optim.losses import pearson_depth_loss, photometric_loss
from recon.optim.params import (
    GAUSSIAN_FIELDS,
    _make_optimizer,
    _pad_sh,
    apply_pose_deltas,
    lr_table,
    scene_extent,
)
from recon.optim.schedules import exp_decay, resolution_level, sh_degree_at
from recon.optim.strategy import DensifyStrategy
from recon.progress import StepReporter
from recon.render.gaussians import background_tensor, rasterize_gaussians

Tensor = torch.Tensor

__all__ = [
    "ExtraViews", "Trainer", "TrainControl", "TrainResult", "TrainState", "TrainingDiverged",
    "GAUSSIAN_FIELDS", "apply_pose_deltas", "image_pyramid", "scene_extent", "train",
]


@dataclass
class TrainControl:
    """Requests a viewer (another thread) can make of a running trainer; checked once per step."""

    pause: threading.Event = field(default_factory=threading.Event)
    """While set, training waits before its next step."""
    stop: threading.Event = field(default_factory=threading.Event)
    """When set, training ends after the current step and returns what it has."""


@dataclass
class TrainState:
    """What the callback sees: a snapshot (detached copies) of the current optimisation state."""

    step: int
    iters: int
    loss: float
    psnr: float
    gaussians: Gaussians
    cameras: Cameras
    control: TrainControl


@dataclass
class TrainResult:
    """Output of :func:`train`.

    Attributes:
        gaussians: optimised Gaussians (detached).
        cameras: the training cameras with optimised w2c (K unchanged).
        history: dicts with step, loss, psnr (training views, mean since the previous entry), lr (means)
            and the number of Gaussians.
        seconds: wall time of this call (a resumed run counts only its own time).
        steps: steps completed (less than ``iters`` when stopped early).
        stopped: True when training ended early through ``TrainControl.stop``.
        scene_extent: the length scale used for position learning rates, pose translations and
            densification thresholds (pass it to :func:`recon.optim.pose.fit_poses` for consistency).
    """

    gaussians: Gaussians
    cameras: Cameras
    history: list[dict]
    seconds: float
    steps: int = 0
    stopped: bool = False
    scene_extent: float = 1.0


@dataclass
class ExtraViews:
    """Target views trained beside the cameras' own (the diffusion stage's pseudo views): every step renders
    one of them, drawn uniformly, in the same rasteriser call as the batch, and adds ``weight`` times its
    photometric loss. Their poses never move and they have no depth prior.

    Attributes:
        cameras: P cameras of the training images' size.
        images: (P, H, W, 3) targets in [0, 1].
        weight: weight of an extra view's loss relative to the batch's.
    """

    cameras: Cameras
    images: Tensor
    weight: float


class TrainingDiverged(ReconError):
    """The loss became NaN or infinite."""


@dataclass
class StepStats:
    """What one :meth:`Trainer.step` measured: the loss and the batch's PSNR (NaN when not tracked)."""

    loss: float
    psnr: float


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _rows(x: Tensor, batch: list[int], ids: Tensor) -> Tensor:
    """``x[batch]``: a view for a single index (no copy), a gather otherwise."""
    return x[batch[0] : batch[0] + 1] if len(batch) == 1 else x[ids]


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """Owns the optimised parameters (Gaussians, pose deltas), their Adam optimisers, the learning-rate and
    coarse-to-fine schedules, the densification strategy, the losses and the random generator.

    Args:
        gaussians: initial Gaussians; their device is the training device. Not modified.
        cameras: N training cameras (initial w2c, K for the image size); same order as ``images``.
        images: (N, H, W, 3) float in [0, 1].
        cfg: which parameters are free (``optimize_gaussians``/``optimize_poses``), learning rates,
            schedules, losses (``ssim_lambda``, ``depth_lambda``, ``pose_reg``), densification.
        depths: optional (N, H, W) depth priors for the Pearson loss (<= 0 marks missing values).
        extra: further weighted target views (:class:`ExtraViews`).
        sampling: ``"epoch"`` (every view equally often) or ``"uniform"`` draws (:class:`ViewSampler`).
        means_lr: the position learning rate as a function of the step (default: ``cfg``'s 3DGS decay
            from ``means_lr`` to ``means_lr_final`` times the extent over ``cfg.iters``).
        start_step: the step the schedules start from (a later part of a longer schedule).
        track_psnr: measure each step's PSNR for the history (one more sync per step).
    """

    def __init__(
        self,
        gaussians: Gaussians,
        cameras: Cameras,
        images: Tensor,
        cfg: TrainConfig | None = None,
        *,
        depths: Tensor | None = None,
        extra: ExtraViews | None = None,
        sampling: str = "epoch",
        means_lr: Callable[[int], float] | None = None,
        start_step: int = 0,
        track_psnr: bool = True,
    ):
        cfg = cfg or TrainConfig()
        check_inputs(len(gaussians), cameras, images, depths)
        self.cfg, self.cameras_in, self.n_views = cfg, cameras, len(cameras)
        self.device = device = gaussians.means.device
        self._means_lr, self.track_psnr = means_lr, track_psnr
        self._set_targets(images, depths, extra)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.sampler = ViewSampler(self.n_views, self.gen, sampling, self.n_extra)
        # One (N, 6) tensor of deltas under one Adam. Cameras outside a step's batch get zero gradients and
        # keep moving on their momentum; measured on the synthetic scene this converges faster than per-
        # camera (sparse) Adam updates. The mask pins the first camera when asked and the extra views.
        n_all = self.n_views + self.n_extra
        self.pose_delta = torch.zeros(n_all, 6, device=device, requires_grad=cfg.optimize_poses)
        self.pose_mask = torch.ones(n_all, 1, device=device)
        self.pose_mask[self.n_views :] = 0.0
        if cfg.fix_first_pose:
            self.pose_mask[0] = 0.0
        self.pose_opt = torch.optim.Adam([self.pose_delta], lr=cfg.pose_lr) if cfg.optimize_poses else None
        extent = cfg.scene_extent if cfg.scene_extent > 0 else scene_extent(cameras, gaussians.means)
        params = {k: getattr(gaussians, k).detach().to(device, torch.float32) for k in GAUSSIAN_FIELDS}
        params["shN"] = _pad_sh(params["shN"], cfg.sh_degree)
        self._set_params(params, extent)
        self.step_count = start_step
        self.history: list[dict] = []
        self.log_acc: list = [0.0, 0.0, 0]  # loss sum, PSNR sum, steps since the last history entry

    def _set_targets(self, images: Tensor, depths: Tensor | None, extra: ExtraViews | None) -> None:
        """The target table: the N training views, then the P extra views (same image size)."""
        dev, f32, n = self.device, torch.float32, self.n_views
        H, W = int(images.shape[1]), int(images.shape[2])
        self.size = (W, H)
        images = images.to(device=dev, dtype=f32)
        if depths is not None:
            depths = depths.to(device=dev, dtype=f32).reshape(n, H, W)
        K = self.cameras_in.K.to(device=dev, dtype=f32)
        w2c = self.cameras_in.w2c.to(device=dev, dtype=f32).detach().clone()
        self.n_extra, self.extra_weight = 0, 0.0
        if extra is not None and len(extra.cameras) > 0:
            check_inputs(1, extra.cameras, extra.images, None)
            if tuple(extra.images.shape[1:3]) != (H, W):
                got = tuple(extra.images.shape[1:3])
                raise ReconError(f"extra views of size {got} for {W}x{H} training views")
            self.n_extra, self.extra_weight = len(extra.cameras), float(extra.weight)
            images = torch.cat([images, extra.images.to(dev, f32)])
            K = torch.cat([K, extra.cameras.K.to(dev, f32)])
            w2c = torch.cat([w2c, extra.cameras.w2c.to(dev, f32)])
            if depths is not None:  # no prior depth for extra views: 0 marks it missing
                depths = torch.cat([depths, depths.new_zeros(self.n_extra, H, W)])
        self.w2c_ref = w2c
        self.bg = background_tensor(self.cfg.background, dev)
        cfg = self.cfg
        self.pyramid = image_pyramid(images, K, max(cfg.coarse_levels, 0), depths, cfg.coarse_min_side)

    def _set_params(self, params: dict[str, Tensor], extent: float) -> None:
        """(Re)build the Gaussian parameters and what depends on them: optimiser, densification state."""
        cfg = self.cfg
        self.extent = extent
        free = cfg.optimize_gaussians
        self.params = {k: v.detach().clone().requires_grad_(free) for k, v in params.items()}
        self.lrs = lr_table(cfg, extent)
        self.optimizer = _make_optimizer(self.params, self.lrs) if cfg.optimize_gaussians else None
        densify = cfg.densify and cfg.optimize_gaussians
        n = len(self.params["means"])
        self.strategy = DensifyStrategy(cfg.densify_cfg, extent, n, self.device) if densify else None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs (tensors and plain values only: safe to load weights-only)."""
        return {
            "step": self.step_count,
            "extent": self.extent,
            "gaussians": {k: v.detach() for k, v in self.params.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "pose_delta": self.pose_delta.detach(),
            "pose_optimizer": None if self.pose_opt is None else self.pose_opt.state_dict(),
            "generator": self.gen.get_state(),
            "view_queue": list(self.sampler.queue),
            "strategy": None if self.strategy is None else self.strategy.state_dict(),
            "history": self.history,
            "log_acc": list(self.log_acc),
            "config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` output (the view count must match)."""
        if state["pose_delta"].shape[0] != self.pose_delta.shape[0]:
            raise ReconError(f"the state is for {state['pose_delta'].shape[0]} views, not {self.n_views}")
        dev = self.device
        self._set_params({k: state["gaussians"][k].to(dev) for k in GAUSSIAN_FIELDS}, float(state["extent"]))
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.pose_delta.copy_(state["pose_delta"])
        if self.pose_opt is not None and state["pose_optimizer"] is not None:
            self.pose_opt.load_state_dict(state["pose_optimizer"])
        self.gen.set_state(state["generator"])
        self.sampler.queue = [int(v) for v in state["view_queue"]]
        if self.strategy is not None and state.get("strategy") is not None:
            self.strategy.load_state_dict(
                {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in state["strategy"].items()}
            )
        self.history = list(state["history"])
        self.step_count = int(state["step"])
        self.log_acc = list(state["log_acc"])

    def save(self, ckpt_dir: Path) -> Path:
        """Write :meth:`state_dict` to ``ckpt_dir/train_state.pt`` (atomically)."""
        return save_checkpoint(ckpt_dir, self.state_dict())

    def gaussians(self) -> Gaussians:
        """A detached copy of the current Gaussians."""
        return Gaussians(**{k: v.detach().clone() for k, v in self.params.items()})

    def cameras(self) -> Cameras:
        """The training cameras with the current w2c (on the cameras' own device)."""
        with torch.no_grad():
            w2c = apply_pose_deltas(self.w2c_ref, self.pose_delta * self.pose_mask, self.extent)
            return self.cameras_in.with_w2c(w2c[: self.n_views].to(self.cameras_in.w2c.device))

    # -- one step -------------------------------------------------------------------------------
    def _set_learning_rates(self, step: int) -> tuple[float, float]:
        """Learning rates of ``step`` into the optimisers; returns (position lr, pose lr)."""
        cfg = self.cfg
        if self._means_lr is not None:
            means_lr = self._means_lr(step)
        else:
            means_lr = self.lrs["means"] * exp_decay(step, cfg.iters, 1.0, cfg.means_lr_final / cfg.means_lr)
        for group in self.optimizer.param_groups if self.optimizer is not None else []:
            group["lr"] = means_lr if group["name"] == "means" else self.lrs[group["name"]]
        pose_lr = exp_decay(step, cfg.iters, cfg.pose_lr, cfg.pose_lr_final, cfg.pose_warmup)
        for group in self.pose_opt.param_groups if self.pose_opt is not None else []:
            group["lr"] = pose_lr
        return means_lr, pose_lr

    def _loss(self, out, lv, batch: list[int], ids: Tensor, k: int, delta: Tensor | None):
        """The step's loss over the batch's first ``k`` (training) views and its extra view, and their
        targets (k, h, w, 3)."""
        cfg = self.cfg
        rgb = out.rgb[..., :3]
        gt = _rows(lv.images, batch[:k], ids[:k])
        loss = photometric_loss(rgb[:k], gt, cfg.ssim_lambda)
        if k < len(batch):  # the extra view
            loss = loss + self.extra_weight * photometric_loss(rgb[k], lv.images[batch[k]], cfg.ssim_lambda)
        if lv.depths is not None and cfg.depth_lambda > 0:
            d_prior = _rows(lv.depths, batch[:k], ids[:k])
            mask = (d_prior > 0) & (out.alpha[:k, ..., 0] > 0.5)
            loss = loss + cfg.depth_lambda * pearson_depth_loss(out.depth[:k, ..., 0], d_prior, mask)
        if delta is not None and cfg.pose_reg > 0:  # this batch's cameras, as the photometric term
            loss = loss + cfg.pose_reg * delta[:k].square().sum(-1).mean()
        return loss, rgb[:k], gt

    def step(self) -> StepStats:
        """One optimisation step: draw views, render them in one rasteriser call, backpropagate the loss,
        update the free parameters, densify when due, and log. Raises :class:`TrainingDiverged`."""
        cfg, step = self.cfg, self.step_count
        means_lr, pose_lr = self._set_learning_rates(step)
        batch = self.sampler.next(cfg.batch_size)
        k = len(batch) - (1 if self.n_extra else 0)
        ids = torch.tensor(batch, device=self.device)
        delta = None
        if self.pose_opt is not None:
            delta = (self.pose_delta * self.pose_mask)[ids]
            w2c = apply_pose_deltas(self.w2c_ref[ids], delta, self.extent)
        else:
            w2c = self.w2c_ref[ids]
        level = resolution_level(step, cfg.iters, len(self.pyramid) - 1, cfg.coarse_fraction)
        lv = self.pyramid[level]
        if level == 0 and step < cfg.crop_until * cfg.iters:
            lv = _random_crop(lv, cfg.crop_scale, self.gen, cfg.coarse_min_side)
        degree = sh_degree_at(step, cfg.sh_degree, cfg.sh_increase_every)
        g = Gaussians(**self.params)
        out = rasterize_gaussians(g, w2c, lv.K[ids], lv.width, lv.height, degree, self.bg)
        loss, rgb, gt = self._loss(out, lv, batch, ids, k, delta)
        loss.backward()
        if self.strategy is not None:
            # NDC-normalised gradients: a crop has the full image's pixels, so its full size counts
            size = self.size if level == 0 else (lv.width, lv.height)
            self.strategy.accumulate(out.means2d, out.radii, *size)
        for opt in (self.optimizer, self.pose_opt):
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        self.step_count = step = step + 1
        if self.strategy is not None:
            self.strategy.step(step, self.params, self.optimizer, self.gen)
        stats = StepStats(float(loss.detach()), float("nan"))
        if self.track_psnr:
            stats.psnr = float(psnr_per_image(rgb.detach().clamp(0, 1), gt).mean())
        if not math.isfinite(stats.loss):
            raise TrainingDiverged(
                f"training diverged at step {step} (loss {stats.loss}); lower the learning rates"
            )
        self._log(stats, means_lr, pose_lr)
        return stats

    def _log(self, stats: StepStats, means_lr: float, pose_lr: float) -> None:
        """Accumulate the step's loss and PSNR; every ``log_every`` steps append their means to history."""
        self.log_acc = [self.log_acc[0] + stats.loss, self.log_acc[1] + stats.psnr, self.log_acc[2] + 1]
        step, cfg = self.step_count, self.cfg
        if step % max(cfg.log_every, 1) == 0 or step == cfg.iters:
            loss_sum, psnr_sum, n_acc = self.log_acc
            self.history.append({
                "step": step, "loss": loss_sum / n_acc, "psnr": psnr_sum / n_acc, "lr": means_lr,
                "pose_lr": pose_lr, "num_gaussians": int(self.params["means"].shape[0]),
            })
            self.log_acc = [0.0, 0.0, 0]


# --------------------------------------------------------------------------------------------------
# The public loop
# --------------------------------------------------------------------------------------------------


def _resume(trainer: Trainer, ckpt_dir: Path, progress: bool) -> None:
    """Load ``ckpt_dir``'s checkpoint into ``trainer`` when there is one."""
    state = load_checkpoint(ckpt_dir, map_location=trainer.device)
    if state is None:
        return
    if state["pose_delta"].shape[0] != trainer.n_views:
        raise ReconError(
            f"checkpoint in {ckpt_dir} is for {state['pose_delta'].shape[0]} views, not {trainer.n_views}; "
            "delete it or use another output folder"
        )
    trainer.load_state_dict(state)
    if progress:
        print(f"recon: training resumes at step {trainer.step_count} of {trainer.cfg.iters} "
              f"({checkpoint_path(ckpt_dir)})", file=sys.stderr, flush=True)


def train(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    cfg: TrainConfig | None = None,
    *,
    depths: Tensor | None = None,
    ckpt_dir: Path | None = None,
    resume: bool = False,
    callback: Callable[[TrainState], None] | None = None,
    control: TrainControl | None = None,
    progress: bool = True,
) -> TrainResult:
    """Optimise ``gaussians`` (and, with ``cfg.optimize_poses``, the camera poses) to fit ``images``:
    a :class:`Trainer` stepped ``cfg.iters`` times, with checkpoints, interrupts, progress and callbacks.

    Args:
        gaussians, cameras, images, cfg, depths: as for :class:`Trainer` (``cfg`` defaults to
            ``TrainConfig()``; the depth loss has weight ``cfg.depth_lambda``).
        ckpt_dir: folder for ``train_state.pt`` (written every ``cfg.checkpoint_every`` steps, at a stop,
            at an interrupt and at the end).
        resume: continue from ``ckpt_dir/train_state.pt`` when it exists (the initial Gaussians and poses
            are then ignored; the camera count must match); with ``progress`` the step it continues from
            is printed.
        callback: called with a :class:`TrainState` every ``cfg.callback_every`` steps and at the end.
        control: pause/stop requests (a fresh one when None; the callback sees it in ``TrainState``).
        progress: show a progress bar.

    Returns a :class:`TrainResult`.

    Raises:
        Interrupted: on SIGINT/SIGTERM (main thread), at the end of the current step, after writing a
            checkpoint of that step to ``ckpt_dir``; ``--resume`` continues from it exactly.
    """
    cfg, control, t_start = cfg or TrainConfig(), control or TrainControl(), time.perf_counter()
    trainer = Trainer(gaussians, cameras, images, cfg, depths=depths)
    if resume and ckpt_dir is not None:
        _resume(trainer, ckpt_dir, progress)
    last, stopped = StepStats(float("nan"), float("nan")), False

    def checkpoint() -> None:
        if ckpt_dir is not None:
            trainer.save(ckpt_dir)

    def interrupted(signum: int) -> Interrupted:
        checkpoint()  # between two steps: the state is consistent and resumes exactly
        step = trainer.step_count
        return Interrupted(f"interrupted at training step {step} of {cfg.iters}", signum, step=step,
                           total=cfg.iters, checkpoint=ckpt_dir is not None)

    def snapshot() -> TrainState:
        g, c = trainer.gaussians(), trainer.cameras()
        return TrainState(trainer.step_count, cfg.iters, last.loss, last.psnr, g, c, control)

    bar = StepReporter("train", cfg.iters, enabled=progress, start=trainer.step_count)
    with bar, deferred_interrupts() as sig:
        while trainer.step_count < cfg.iters:
            while control.pause.is_set() and not control.stop.is_set() and sig.signum is None:
                time.sleep(0.05)
            if sig.signum is not None:
                raise interrupted(sig.signum)
            if control.stop.is_set():
                stopped = True
                break
            last = trainer.step()
            step = trainer.step_count
            bar.update(step, f"loss {last.loss:.4f}  PSNR {last.psnr:5.2f} dB")
            if callback is not None and cfg.callback_every > 0 and step % cfg.callback_every == 0:
                callback(snapshot())
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                checkpoint()
        if sig.signum is not None:  # arrived during the last step
            raise interrupted(sig.signum)
    checkpoint()
    final = snapshot()
    if callback is not None:
        callback(final)
    return TrainResult(final.gaussians, final.cameras, trainer.history, time.perf_counter() - t_start,
                       trainer.step_count, stopped, trainer.extent)
