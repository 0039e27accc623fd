"""Joint optimisation of Gaussians and camera poses against the training images (3DGS-style, with
InstantSplat's pose refinement).

Poses: each camera has a 6-vector delta ``(v / extent, omega)`` and ``w2c = se3_exp(xi) @ w2c_ref`` with
``xi = (extent * v, omega)`` (CONVENTIONS: left-multiplied se(3) on w2c, reference pose kept). Scaling
the translation by the scene extent makes one learning rate mean the same for rotation (radians) and
translation (fractions of the scene) in every scene.

Determinism: every random choice (view order, split sampling) comes from one ``torch.Generator`` seeded
with ``TrainConfig.seed`` whose state is checkpointed, and learning rates are pure functions of the step,
so a resumed run reproduces an uninterrupted one.
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
import torch.nn.functional as F

from recon.cameras import Cameras, camera_centers, se3_exp
from recon.errors import Interrupted, ReconError
from recon.eval.metrics import psnr_per_image
from recon.gaussians import Gaussians, num_sh_bases
from recon.interrupts import deferred_interrupts
from recon.optim.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from recon.optim.config import TrainConfig
from recon.optim.losses import pearson_depth_loss, photometric_loss
from recon.optim.schedules import exp_decay, resolution_level, sh_degree_at
from recon.optim.strategy import DensifyStrategy
from recon.progress import StepReporter
from recon.render import rasterize, render_gaussians

Tensor = torch.Tensor

GAUSSIAN_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


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


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def scene_extent(cameras: Cameras, means: Tensor | None = None) -> float:
    """Scene length scale: 3DGS's 1.1 x the largest camera distance from the cameras' centroid.

    Sparse or nearly coincident cameras make that tiny, so it is floored at a tenth of the median distance
    from that centroid to the Gaussians (when given).
    """
    c = camera_centers(cameras.w2c.detach().double())
    centroid = c.mean(0)
    radius = float((c - centroid).norm(dim=-1).max()) if len(c) > 1 else 0.0
    floor = 0.0
    if means is not None and means.numel():
        floor = 0.1 * float((means.detach().double().cpu() - centroid.cpu()).norm(dim=-1).median())
    extent = 1.1 * max(radius, floor)
    return extent if extent > 0 else 1.0


def background_tensor(background, device, dtype=torch.float32) -> Tensor | None:
    if background is None:
        return None
    return torch.as_tensor(background, dtype=dtype, device=device).reshape(3)


def render_images(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Tensor | tuple[float, float, float] | None = None,
) -> Tensor:
    """Colours (N, H, W, 3) of ``gaussians`` seen from every camera (all of one image size).

    A thin loop over :func:`recon.render.render_gaussians`, one camera at a time so that memory stays
    bounded for many views. No gradients are needed by a viewer or for evaluation: call it under
    ``torch.no_grad()`` there.
    """
    if len(cameras) == 0:
        raise ReconError("no cameras to render")
    if not bool((cameras.sizes == cameras.sizes[0]).all()):
        raise ReconError("cameras have different image sizes; render them in separate calls")
    bg = background_tensor(background, gaussians.means.device, gaussians.means.dtype)
    renders = [render_gaussians(gaussians, cameras.subset([i]), bg).rgb[..., :3] for i in range(len(cameras))]
    return torch.cat(renders)


def _rasterize(g: Gaussians, w2c: Tensor, K: Tensor, W: int, H: int, sh_degree: int, bg: Tensor | None):
    """One rasteriser call for Gaussians ``g`` seen from C cameras (w2c (C,4,4), K (C,3,3))."""
    a = g.activated()
    return rasterize(
        a["means"], a["quats"], a["scales"], a["opacities"], a["sh"], w2c, K, W, H,
        sh_degree=sh_degree, background=None if bg is None else bg.expand(w2c.shape[0], 3),
    )


def _pose_xi(delta: Tensor, extent: float) -> Tensor:
    """se(3) twists (N, 6) from the optimised deltas (translation in extent units)."""
    scale = delta.new_tensor([extent, extent, extent, 1.0, 1.0, 1.0])
    return delta * scale


def apply_pose_deltas(w2c_ref: Tensor, delta: Tensor, extent: float) -> Tensor:
    """w2c (N, 4, 4) = se3_exp(xi) @ w2c_ref for the optimised deltas (N, 6)."""
    return se3_exp(_pose_xi(delta, extent)) @ w2c_ref


def _pad_sh(shN: Tensor, degree: int) -> Tensor:
    """shN resized to ``degree``'s (degree+1)^2 - 1 coefficients (zeros appended, or higher bands dropped)."""
    k = num_sh_bases(degree) - 1
    if shN.shape[1] >= k:
        return shN[:, :k].clone()
    return torch.cat([shN, shN.new_zeros(shN.shape[0], k - shN.shape[1], 3)], dim=1)


@dataclass
class _Level:
    """The training images and intrinsics at one resolution of the coarse-to-fine pyramid."""

    images: Tensor  # (N, h, w, 3)
    K: Tensor  # (N, 3, 3) for the (w, h) images
    width: int
    height: int
    depths: Tensor | None  # (N, h, w) or None


def image_pyramid(
    images: Tensor, K: Tensor, levels: int, depths: Tensor | None = None, min_side: int = 1
) -> list[_Level]:
    """Level k (0 = the input) holds the images area-averaged to round(size / 2^k) and K scaled to match
    (with the pixel-corner origin of CONVENTIONS, focal and principal point scale alike), for k up to
    ``levels`` while the long side stays >= ``min_side``. Depths, when given, are subsampled (nearest), so
    no depth is invented at a depth edge."""
    H, W = int(images.shape[1]), int(images.shape[2])
    out = [_Level(images, K, W, H, depths)]
    for k in range(1, levels + 1):
        h, w = max(1, round(H / 2**k)), max(1, round(W / 2**k))
        if max(h, w) < min_side:
            break
        imgs = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
        S = torch.diag(K.new_tensor([w / W, h / H, 1.0]))
        d = None if depths is None else F.interpolate(depths[:, None], size=(h, w), mode="nearest")[:, 0]
        out.append(_Level(imgs.contiguous(), S @ K, w, h, d))
    return out


def _random_crop(level: _Level, scale: float, gen: torch.Generator, min_side: int = 1) -> _Level:
    """A random window of ``scale`` times each side of ``level``'s images (the same for every view), with
    the principal point moved to the window's corner so that it renders as that part of the image. Images
    whose window would have a long side under ``min_side`` are returned whole (too little to fit)."""
    cw, ch = max(1, round(level.width * scale)), max(1, round(level.height * scale))
    if (cw >= level.width and ch >= level.height) or max(cw, ch) < min_side:
        return level
    x0 = int(torch.randint(0, level.width - cw + 1, (1,), generator=gen))
    y0 = int(torch.randint(0, level.height - ch + 1, (1,), generator=gen))
    K = level.K.clone()
    K[:, 0, 2] -= x0
    K[:, 1, 2] -= y0
    d = None if level.depths is None else level.depths[:, y0 : y0 + ch, x0 : x0 + cw]
    return _Level(level.images[:, y0 : y0 + ch, x0 : x0 + cw], K, cw, ch, d)


def _check_inputs(gaussians: Gaussians, cameras: Cameras, images: Tensor, depths: Tensor | None) -> None:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ReconError(f"training images must be (N, H, W, 3), got {tuple(images.shape)}")
    if images.shape[0] != len(cameras):
        raise ReconError(f"{images.shape[0]} training images for {len(cameras)} cameras")
    H, W = images.shape[1:3]
    if not bool((cameras.sizes[:, 0] == W).all() and (cameras.sizes[:, 1] == H).all()):
        raise ReconError(
            f"camera sizes {cameras.sizes.tolist()[:3]}... do not match the {W}x{H} images; scale the cameras"
        )
    if len(gaussians) == 0:
        raise ReconError("no Gaussians to optimise: the initialisation produced an empty point cloud")
    if depths is not None and depths.shape[:3] != images.shape[:3]:
        raise ReconError(f"depth priors {tuple(depths.shape)} do not match images {tuple(images.shape)}")


class _ViewSampler:
    """Random view order without replacement, reshuffled each epoch, from the trainer's generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n = n
        self.gen = generator
        self.queue: list[int] = []

    def next(self, k: int) -> list[int]:
        k = min(k, self.n)
        out: list[int] = []
        while len(out) < k:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.gen).tolist()
            v = self.queue.pop()
            if v not in out:
                out.append(v)
        return out


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


def _lr_table(cfg: TrainConfig, extent: float) -> dict[str, float]:
    return {
        "means": cfg.means_lr * extent,
        "quats": cfg.quats_lr,
        "log_scales": cfg.scales_lr,
        "opacity_logits": cfg.opacity_lr,
        "sh0": cfg.sh0_lr,
        "shN": cfg.shN_lr,
    }


def _make_optimizer(params: dict[str, Tensor], lrs: dict[str, float]) -> torch.optim.Adam:
    # eps 1e-15 as 3DGS: gradients of individual Gaussians can be tiny.
    groups = [{"params": [params[k]], "lr": lrs[k], "name": k} for k in GAUSSIAN_FIELDS]
    return torch.optim.Adam(groups, eps=1e-15)


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
    """Optimise ``gaussians`` (and, with ``cfg.optimize_poses``, the camera poses) to fit ``images``.

    Args:
        gaussians: initial Gaussians; their device is the training device. Not modified.
        cameras: training cameras (initial w2c, K for the image size); same order as ``images``.
        images: (N, H, W, 3) float in [0, 1], the training views.
        cfg: configuration (defaults: ``TrainConfig()``).
        depths: optional (N, H, W) depth priors for the Pearson loss (weight ``cfg.depth_lambda``; affine-
            invariant, so relative/monocular depth is fine; <= 0 marks missing values).
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
    cfg = cfg or TrainConfig()
    t_start = time.perf_counter()
    _check_inputs(gaussians, cameras, images, depths)
    device = gaussians.means.device
    control = control or TrainControl()
    n_views = len(cameras)
    H, W = int(images.shape[1]), int(images.shape[2])
    images = images.to(device=device, dtype=torch.float32)
    if depths is not None:
        depths = depths.to(device=device, dtype=torch.float32).reshape(n_views, H, W)
    K_all = cameras.K.to(device=device, dtype=torch.float32)
    w2c_ref = cameras.w2c.to(device=device, dtype=torch.float32).detach().clone()
    bg = background_tensor(cfg.background, device)

    state = load_checkpoint(ckpt_dir, map_location=device) if resume and ckpt_dir is not None else None
    if state is not None and state["pose_delta"].shape[0] != n_views:
        raise ReconError(
            f"checkpoint in {ckpt_dir} is for {state['pose_delta'].shape[0]} views, not {n_views}; "
            "delete it or use another output folder"
        )
    if state is not None:
        extent = float(state["extent"])
        params = {k: state["gaussians"][k].to(device) for k in GAUSSIAN_FIELDS}
    else:
        extent = cfg.scene_extent if cfg.scene_extent > 0 else scene_extent(cameras, gaussians.means)
        params = {k: getattr(gaussians, k).detach().to(device, torch.float32) for k in GAUSSIAN_FIELDS}
        params["shN"] = _pad_sh(params["shN"], cfg.sh_degree)
    params = {k: v.detach().clone().requires_grad_(cfg.optimize_gaussians) for k, v in params.items()}
    lrs = _lr_table(cfg, extent)
    optimizer = _make_optimizer(params, lrs) if cfg.optimize_gaussians else None
    pyramid = image_pyramid(images, K_all, max(cfg.coarse_levels, 0), depths, cfg.coarse_min_side)
    # One (N, 6) tensor of deltas under one Adam. Cameras outside a step's batch get zero gradients and
    # keep moving on their momentum; measured on the synthetic scene this converges faster than per-camera
    # (sparse) Adam updates. The mask pins the first camera when asked (its row's gradient is always 0).
    pose_delta = torch.zeros(n_views, 6, device=device, requires_grad=cfg.optimize_poses)
    pose_mask = torch.ones(n_views, 1, device=device)
    if cfg.fix_first_pose:
        pose_mask[0] = 0.0
    pose_opt = torch.optim.Adam([pose_delta], lr=cfg.pose_lr) if cfg.optimize_poses else None
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = _ViewSampler(n_views, gen)
    densify = cfg.densify and cfg.optimize_gaussians
    strategy = DensifyStrategy(cfg.densify_cfg, extent, len(params["means"]), device) if densify else None
    history: list[dict] = []
    step = 0
    if state is not None:
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            pose_delta.copy_(state["pose_delta"])
        if pose_opt is not None and state["pose_optimizer"] is not None:
            pose_opt.load_state_dict(state["pose_optimizer"])
        gen.set_state(state["generator"])
        sampler.queue = [int(v) for v in state["view_queue"]]
        if strategy is not None and state.get("strategy") is not None:
            strategy.load_state_dict(
                {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in state["strategy"].items()}
            )
        history = list(state["history"])
        step = int(state["step"])
        if progress:
            print(f"recon: training resumes at step {step} of {cfg.iters} ({checkpoint_path(ckpt_dir)})",
                  file=sys.stderr, flush=True)

    def current_w2c() -> Tensor:
        return apply_pose_deltas(w2c_ref, pose_delta * pose_mask, extent)

    def snapshot_gaussians() -> Gaussians:
        return Gaussians(**{k: v.detach().clone() for k, v in params.items()})

    def snapshot_cameras() -> Cameras:
        with torch.no_grad():
            return cameras.with_w2c(current_w2c().to(cameras.w2c.device))

    def checkpoint() -> None:
        if ckpt_dir is None:
            return
        save_checkpoint(ckpt_dir, {
            "step": step,
            "extent": extent,
            "gaussians": {k: v.detach() for k, v in params.items()},
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "pose_delta": pose_delta.detach(),
            "pose_optimizer": None if pose_opt is None else pose_opt.state_dict(),
            "generator": gen.get_state(),
            "view_queue": list(sampler.queue),
            "strategy": None if strategy is None else strategy.state_dict(),
            "history": history,
            "log_acc": [loss_sum, psnr_sum, n_acc],
            "config": dataclasses.asdict(cfg),
        })

    loss_sum, psnr_sum, n_acc = (0.0, 0.0, 0) if state is None else state["log_acc"]
    last_loss = last_psnr = float("nan")
    stopped = False

    def interrupted(signum: int) -> Interrupted:
        checkpoint()  # between two steps: the state is consistent and resumes exactly
        return Interrupted(f"interrupted at training step {step} of {cfg.iters}", signum, step=step,
                           total=cfg.iters, checkpoint=ckpt_dir is not None)

    with StepReporter("train", cfg.iters, enabled=progress, start=step) as bar, deferred_interrupts() as sig:
        while step < cfg.iters:
            while control.pause.is_set() and not control.stop.is_set() and sig.signum is None:
                time.sleep(0.05)
            if sig.signum is not None:
                raise interrupted(sig.signum)
            if control.stop.is_set():
                stopped = True
                break
            lr_scale = exp_decay(step, cfg.iters, 1.0, cfg.means_lr_final / cfg.means_lr)
            for group in optimizer.param_groups if optimizer is not None else []:
                group["lr"] = lrs[group["name"]] * (lr_scale if group["name"] == "means" else 1.0)
            pose_lr = exp_decay(step, cfg.iters, cfg.pose_lr, cfg.pose_lr_final, cfg.pose_warmup)
            if pose_opt is not None:
                for group in pose_opt.param_groups:
                    group["lr"] = pose_lr

            batch = sampler.next(cfg.batch_size)
            ids = torch.tensor(batch, device=device)
            delta = (pose_delta * pose_mask)[ids]
            w2c = apply_pose_deltas(w2c_ref[ids], delta, extent)
            g = Gaussians(**params)
            degree = sh_degree_at(step, cfg.sh_degree, cfg.sh_increase_every)
            level = resolution_level(step, cfg.iters, len(pyramid) - 1, cfg.coarse_fraction)
            lv = pyramid[level]
            if level == 0 and step < cfg.crop_until * cfg.iters:
                lv = _random_crop(lv, cfg.crop_scale, gen, cfg.coarse_min_side)
            out = _rasterize(g, w2c, lv.K[ids], lv.width, lv.height, degree, bg)
            rgb = out.rgb[..., :3]
            gt = lv.images[ids]
            loss = photometric_loss(rgb, gt, cfg.ssim_lambda)
            if lv.depths is not None and cfg.depth_lambda > 0:
                d_prior = lv.depths[ids]
                mask = (d_prior > 0) & (out.alpha[..., 0] > 0.5)
                loss = loss + cfg.depth_lambda * pearson_depth_loss(out.depth[..., 0], d_prior, mask)
            if pose_opt is not None and cfg.pose_reg > 0:  # this batch's cameras, as the photometric term
                loss = loss + cfg.pose_reg * delta.square().sum(-1).mean()
            loss.backward()
            if strategy is not None:
                # NDC-normalised gradients: a crop has the full image's pixels, so its full size counts
                size = (W, H) if level == 0 else (lv.width, lv.height)
                strategy.accumulate(out.means2d, out.radii, *size)
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if pose_opt is not None:
                pose_opt.step()
                pose_opt.zero_grad(set_to_none=True)
            step += 1
            if strategy is not None:
                strategy.step(step, params, optimizer, gen)

            last_loss = float(loss.detach())
            last_psnr = float(psnr_per_image(rgb.detach().clamp(0, 1), gt).mean())
            if not math.isfinite(last_loss):
                raise ReconError(
                    f"training diverged at step {step} (loss {last_loss}); lower the learning rates"
                )
            loss_sum += last_loss
            psnr_sum += last_psnr
            n_acc += 1
            if step % max(cfg.log_every, 1) == 0 or step == cfg.iters:
                history.append({
                    "step": step, "loss": loss_sum / n_acc, "psnr": psnr_sum / n_acc,
                    "lr": lrs["means"] * lr_scale, "pose_lr": pose_lr,
                    "num_gaussians": int(params["means"].shape[0]),
                })
                loss_sum = psnr_sum = 0.0
                n_acc = 0
            bar.update(step, f"loss {last_loss:.4f}  PSNR {last_psnr:5.2f} dB")
            if callback is not None and cfg.callback_every > 0 and step % cfg.callback_every == 0:
                callback(TrainState(step, cfg.iters, last_loss, last_psnr, snapshot_gaussians(),
                                    snapshot_cameras(), control))
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                checkpoint()
        if sig.signum is not None:  # arrived during the last step
            raise interrupted(sig.signum)
    checkpoint()
    result_g = snapshot_gaussians()
    result_c = snapshot_cameras()
    if callback is not None:
        callback(TrainState(step, cfg.iters, last_loss, last_psnr, result_g, result_c, control))
    return TrainResult(result_g, result_c, history, time.perf_counter() - t_start, step, stopped, extent)
