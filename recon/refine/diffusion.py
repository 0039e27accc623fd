"""Diffusion-prior refinement of unseen regions (after Difix3D+, ReconX, LM-Gaussian).

With a handful of views, everything between and beyond the training cameras is under-constrained: holes
and floaters. This stage renders pseudo views on a trajectory through and around the training cameras,
lets an image-to-image diffusion model clean them up, and adds them to training as pseudo ground truth
with a lower weight; the pseudo views are re-rendered and re-enhanced every ``steps_per_round`` steps (a
cleaner scene gives cleaner renders to fix, with a decreasing strength). A Pearson correlation between the
rendered depth of the training views and the geometry prior's depth sits beside it, so the photometric
pull of imperfect pseudo views cannot bend the geometry the prior measured.

The model is a local diffusers folder (``--diffusion-model PATH``; nothing is ever downloaded). Two ways to
run it:

- ``img2img``: a diffusers image-to-image pipeline (e.g. StableDiffusionImg2ImgPipeline, or any text-to-
  image pipeline converted with ``AutoPipelineForImage2Image``) with an empty prompt and several steps at
  the round's ``strength``. A pipeline whose ``__call__`` takes a reference image (``ref_image``, as
  Difix-style fixers do) is given the nearest training view.
- ``fixer``: a single denoising step (SD-Turbo-style "fixer" models): encode, add noise at timestep
  ``strength * T`` (0.2 -> 199, Difix's choice), one UNet call, the scheduler's x0 estimate, decode.

The model is loaded once per stage, in fp16 on CUDA and fp32 on CPU, and freed at the end.
Anything with the :class:`Enhancer` signature can stand in for the model (tests use an oracle).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from recon.cameras import Cameras, camera_centers, interpolate_cameras, rotation_angle_deg, transform_points
from recon.errors import ReconError
from recon.gaussians import Gaussians
from recon.metrics import psnr_per_image
from recon.optim.schedules import exp_decay
from recon.optim.trainer import ExtraViews, TrainConfig, Trainer, TrainingDiverged
from recon.priors.base import PriorResult
from recon.refine.base import RefineContext, Scene
from recon.refine.config import DiffusionConfig
from recon.render.gaussians import render_images

Tensor = torch.Tensor

__all__ = [
    "DiffusionConfig",
    "Enhancer",
    "DiffusersEnhancer",
    "pseudo_cameras",
    "nearest_views",
    "train_with_pseudo_views",
    "run_diffusion_stage",
    "prior_depths",
    "DiffusionRefinement",
]


class Enhancer(Protocol):
    """Maps renders of pseudo views to better images.

    Args:
        renders: (N, H, W, 3) float in [0, 1].
        cameras: the N pseudo cameras (oracles use them; models ignore them).
        references: (N, H, W, 3) the nearest training view of each (for reference-conditioned models).
        strength: this round's denoising strength in (0, 1].
    Returns (N, H, W, 3) float32 in [0, 1] on the renders' device.
    """

    def __call__(self, renders: Tensor, cameras: Cameras, references: Tensor, strength: float) -> Tensor: ...


# --------------------------------------------------------------------------------------------------
# Pseudo-view trajectory
# --------------------------------------------------------------------------------------------------


def _path_order(cameras: Cameras) -> list[int]:
    """Training cameras sorted along the principal direction of their centres (a path through them)."""
    c = camera_centers(cameras.w2c.double().cpu())
    if len(c) < 2:
        return list(range(len(c)))
    centred = c - c.mean(0)
    _, _, V = torch.linalg.svd(centred, full_matrices=False)
    return torch.argsort(centred @ V[0]).tolist()


def pseudo_cameras(cameras: Cameras, n: int, extrapolate: float = 0.25) -> Cameras:
    """``n`` pseudo cameras on a path through the training cameras and ``extrapolate`` spacings beyond.

    The cameras are ordered along the principal axis of their centres; the path parameter s runs over
    [-e, N - 1 + e] and the pseudo views sit at the centres of n equal intervals (so none coincides with a
    training camera when n and N are not in step). Between cameras i and i+1 the pose is interpolated
    (centres linearly, orientation by slerp); beyond the ends it is extrapolated the same way. Intrinsics
    and image size are those of the pair's first camera; all training cameras must share one size.
    """
    if len(cameras) < 2:
        raise ReconError("pseudo views need at least 2 training cameras")
    order = _path_order(cameras)
    ordered = cameras.subset(order)
    N = len(ordered)
    span = (N - 1) + 2 * extrapolate
    out = []
    for k in range(n):
        s = -extrapolate + (k + 0.5) * span / n
        i = min(max(int(math.floor(s)), 0), N - 2)
        out.append(interpolate_cameras(ordered, i, i + 1, [s - i]))
    cams = Cameras.cat(out)
    cams.names = [f"pseudo_{k:03d}" for k in range(n)]
    return cams


def nearest_views(pseudo: Cameras, cameras: Cameras) -> list[int]:
    """Index of the training camera nearest to each pseudo camera (centre distance in units of the
    training cameras' mean spacing, plus the viewing-direction angle in radians)."""
    cp = camera_centers(pseudo.w2c.double())
    ct = camera_centers(cameras.w2c.double())
    spacing = torch.cdist(ct, ct).sum() / max(len(ct) * (len(ct) - 1), 1)
    dist = torch.cdist(cp, ct) / spacing.clamp_min(1e-9)
    ang = torch.stack([
        torch.deg2rad(rotation_angle_deg(pseudo.w2c[i, :3, :3].double().expand(len(ct), 3, 3),
                                         cameras.w2c[:, :3, :3].double()))
        for i in range(len(pseudo))
    ])
    return torch.argmin(dist + ang, dim=1).tolist()


# --------------------------------------------------------------------------------------------------
# The diffusers enhancer
# --------------------------------------------------------------------------------------------------


def _pipeline_device_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


class DiffusersEnhancer:
    """A local diffusers pipeline as an :class:`Enhancer` (see the module docstring for the two modes).

    Loaded once in the constructor (fp16 on CUDA, fp32 on CPU); call :meth:`close` to free it.
    """

    def __init__(self, path: Path, device: torch.device, cfg: DiffusionConfig):
        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise ReconError(
                f"--diffusion-model {path} is not a diffusers folder (no model_index.json); "
                "give a folder saved with save_pretrained"
            )
        try:
            from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
        except ImportError:
            msg = "--diffusion-model needs the 'diffusion' extra: pip install 'recon[diffusion]'"
            raise ReconError(msg) from None
        self.device = torch.device(device)
        self.dtype = _pipeline_device_dtype(self.device)
        self.cfg = cfg
        try:
            pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=self.dtype, local_files_only=True)
        except Exception as e:  # a broken folder is the user's to fix: one line, not a traceback
            msg = f"could not load the diffusion model in {path}: {type(e).__name__}: {e}"
            raise ReconError(msg) from None
        self.mode = cfg.mode
        if self.mode in ("auto", "img2img") and "strength" not in inspect.signature(pipe.__call__).parameters:
            try:
                pipe = AutoPipelineForImage2Image.from_pipe(pipe)
            except Exception:
                if self.mode == "img2img":
                    msg = f"{path} has no image-to-image form; use --refine.diffusion.mode fixer"
                    raise ReconError(msg) from None
                self.mode = "fixer"
        if self.mode == "auto":
            self.mode = "img2img"
        if self.mode == "fixer":
            missing = [c for c in ("vae", "unet", "scheduler") if getattr(pipe, c, None) is None]
            if missing:
                raise ReconError(f"{path} lacks {', '.join(missing)}: it cannot run as a single-step fixer")
        pipe.to(self.device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        params = inspect.signature(pipe.__call__).parameters
        self.ref_arg = next((a for a in ("ref_image", "reference_image") if a in params), None)
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        unet_scale = 2 ** (len(pipe.unet.config.block_out_channels) - 1) if getattr(pipe, "unet", None) else 1
        self.multiple = vae_scale * unet_scale  # image sides must be multiples of this
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self._text = None

    def close(self) -> None:
        """Free the model (and the GPU memory it held)."""
        self.pipe = None
        self._text = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- helpers --------------------------------------------------------------------------------
    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear",
                                                                     align_corners=False, antialias=True)

    def _text_embeddings(self, n: int) -> Tensor | None:
        pipe = self.pipe
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            return None
        if self._text is None:
            tok = pipe.tokenizer
            max_len = min(int(tok.model_max_length), int(pipe.text_encoder.config.max_position_embeddings))
            ids = tok([self.cfg.prompt], padding="max_length", max_length=max_len, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                self._text = pipe.text_encoder(ids)[0].to(self.dtype)
        return self._text.expand(n, -1, -1)

    @torch.no_grad()
    def _fixer(self, x: Tensor, strength: float) -> Tensor:
        """One denoising step from timestep strength * T; x (B,3,h,w) in [-1, 1] -> same."""
        pipe = self.pipe
        vae, unet, sched = pipe.vae, pipe.unet, pipe.scheduler
        T = int(sched.config.num_train_timesteps)
        t = min(max(int(round(strength * T)) - 1, 0), T - 1)
        sf = float(getattr(vae.config, "scaling_factor", 1.0))
        lat = vae.encode(x).latent_dist.mode() * sf
        noise = torch.randn(lat.shape, generator=self.generator, dtype=torch.float32).to(lat)
        a = sched.alphas_cumprod[t].to(self.device, torch.float32)
        noisy = (a.sqrt() * lat.float() + (1 - a).sqrt() * noise.float()).to(self.dtype)
        tt = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
        kw = {}
        emb = self._text_embeddings(x.shape[0])
        if emb is not None:
            kw["encoder_hidden_states"] = emb
        out = unet(noisy, tt, **kw).sample.float()
        pred = sched.config.get("prediction_type", "epsilon")
        if pred == "epsilon":
            x0 = (noisy.float() - (1 - a).sqrt() * out) / a.sqrt()
        elif pred == "v_prediction":
            x0 = a.sqrt() * noisy.float() - (1 - a).sqrt() * out
        else:  # "sample"
            x0 = out
        return vae.decode((x0 / sf).to(self.dtype)).sample.float()

    @torch.no_grad()
    def _img2img(self, x01: Tensor, refs01: Tensor, strength: float) -> Tensor:
        steps = max(self.cfg.inference_steps, math.ceil(1.0 / max(strength, 1e-3)))  # >= 1 actual step
        kw = dict(prompt=[self.cfg.prompt] * x01.shape[0], image=x01.to(self.dtype), strength=strength,
                  num_inference_steps=steps, guidance_scale=self.cfg.guidance_scale, output_type="pt",
                  generator=self.generator)
        if self.ref_arg is not None:
            kw[self.ref_arg] = refs01.to(self.dtype)
        return self.pipe(**kw).images.float()

    def __call__(self, renders: Tensor, cameras: Cameras, references: Tensor, strength: float) -> Tensor:
        if self.pipe is None:
            raise RuntimeError("DiffusersEnhancer used after close()")
        N, H, W, _ = renders.shape
        m = self.multiple
        size = (max(m, round(H / m) * m), max(m, round(W / m) * m))
        out = []
        for s in range(0, N, max(self.cfg.batch_size, 1)):
            x = renders[s : s + self.cfg.batch_size].permute(0, 3, 1, 2).to(self.device, torch.float32)
            r = references[s : s + self.cfg.batch_size].permute(0, 3, 1, 2).to(self.device, torch.float32)
            x, r = self._resize(x, size), self._resize(r, size)
            if self.mode == "fixer":
                y = (self._fixer((x * 2 - 1).to(self.dtype), strength) + 1) / 2
            else:
                y = self._img2img(x.clamp(0, 1), r.clamp(0, 1), strength)
            out.append(self._resize(y.float(), (H, W)).clamp(0, 1))
        return torch.cat(out).permute(0, 2, 3, 1).contiguous().to(renders.device, torch.float32)


# --------------------------------------------------------------------------------------------------
# Training with pseudo views
# --------------------------------------------------------------------------------------------------


def train_with_pseudo_views(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    train_cfg: TrainConfig,
    iters: int,
    *,
    extent: float,
    pseudo_cameras: Cameras | None = None,
    pseudo_images: Tensor | None = None,
    pseudo_weight: float = 0.3,
    depths: Tensor | None = None,
    depth_lambda: float = 0.0,
    lr_scale: float = 0.1,
    step0: int = 0,
    total: int | None = None,
    seed: int = 0,
) -> tuple[Gaussians, float]:
    """Fine-tune Gaussians on the training views (fixed poses) plus weighted pseudo views: a configuration
    of :class:`recon.optim.trainer.Trainer`.

    Each step renders one training view and, when given, one pseudo view (both drawn uniformly) in a single
    rasteriser call: loss = L(train) + pseudo_weight * L(pseudo) + depth_lambda * (1 - Pearson(depth_train,
    prior)), L being the trainer's photometric loss. Poses are frozen, SH at the Gaussians' degree, no
    coarse-to-fine, crops or densification. Learning rates are ``train_cfg``'s, the position one starting
    at ``lr_scale`` x the initial one and decaying to the final one over ``total`` steps (``step0`` of
    which are already done: several rounds form one schedule).

    Args:
        images: (N, H, W, 3) training images; pseudo_images (P, H, W, 3) likewise, same size.
        depths: (N, H, W) prior depth of the training views (<= 0 where unknown).
    Returns the fine-tuned Gaussians (detached) and the mean loss of the last 10% of steps.
    """
    total = total or iters
    cfg = dataclasses.replace(
        train_cfg, iters=max(total, step0 + iters), optimize_gaussians=True, optimize_poses=False,
        densify=False, depth_lambda=depth_lambda, sh_degree=gaussians.sh_degree, sh_increase_every=0,
        coarse_levels=0, crop_until=0.0, batch_size=1, scene_extent=extent, seed=seed + step0,
        checkpoint_every=0, callback_every=0,
    )
    base = train_cfg.means_lr * extent * lr_scale
    means_lr = functools.partial(exp_decay, total=total, lr_init=base,
                                 lr_final=min(train_cfg.means_lr_final * extent, base))
    use_pseudo = pseudo_cameras is not None and pseudo_images is not None and len(pseudo_cameras) > 0
    extra = ExtraViews(pseudo_cameras, pseudo_images, pseudo_weight) if use_pseudo else None
    trainer = Trainer(gaussians, cameras, images, cfg, depths=depths, extra=extra, sampling="uniform",
                      means_lr=means_lr, start_step=step0, track_psnr=False)
    tail: list[float] = []
    for it in range(iters):
        try:
            loss = trainer.step().loss
        except TrainingDiverged:
            hint = "lower --diffusion.lr-scale or the pseudo weight"
            raise ReconError(f"diffusion refinement diverged; {hint}") from None
        if it >= iters - max(iters // 10, 1):
            tail.append(loss)
    return trainer.gaussians(), sum(tail) / max(len(tail), 1)


def run_diffusion_stage(
    gaussians: Gaussians,
    cameras: Cameras,
    images: Tensor,
    cfg: DiffusionConfig,
    train_cfg: TrainConfig,
    *,
    extent: float,
    depths: Tensor | None = None,
    enhancer: Enhancer | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Gaussians, dict]:
    """Alternate pseudo-view enhancement and fine-tuning for ``cfg.rounds`` rounds (see module docstring).

    ``enhancer`` overrides the model folder (tests pass an oracle); otherwise ``cfg.model`` is loaded as a
    :class:`DiffusersEnhancer` on the Gaussians' device and freed at the end. Without either the stage is
    skipped with one log line. Returns the refined Gaussians and metrics (per round: strength, the mean
    PSNR between a pseudo render and its enhanced version, the tail training loss, seconds).
    """
    if enhancer is None and cfg.model is None:
        log("recon: diffusion refinement skipped (no --diffusion-model given)")
        return gaussians, {"skipped": "no diffusion model given"}
    if cfg.rounds < 1 or cfg.num_pseudo < 1 or cfg.steps_per_round < 1:
        raise ReconError("diffusion refinement needs rounds, num_pseudo and steps_per_round >= 1")
    if not (0 < cfg.strength_end <= 1 and 0 < cfg.strength_start <= 1):
        raise ReconError("diffusion strengths must lie in (0, 1]")
    device = gaussians.means.device
    t0 = time.perf_counter()
    own = enhancer is None
    if own:
        enhancer = DiffusersEnhancer(cfg.model, device, cfg)
    metrics: dict = {"model": str(cfg.model) if cfg.model else "custom enhancer",
                     "mode": getattr(enhancer, "mode", "custom"), "rounds": [],
                     "dtype": str(getattr(enhancer, "dtype", "")).replace("torch.", "")}
    pseudo = pseudo_cameras(cameras.to("cpu"), cfg.num_pseudo, cfg.extrapolate)
    refs = images[nearest_views(pseudo, cameras.to("cpu"))]
    metrics["pseudo_views"] = {"count": len(pseudo), "w2c": pseudo.w2c.tolist()}
    total = cfg.rounds * cfg.steps_per_round
    try:
        for r in range(cfg.rounds):
            tr = time.perf_counter()
            frac = r / max(cfg.rounds - 1, 1)
            strength = cfg.strength_start + frac * (cfg.strength_end - cfg.strength_start)
            with torch.no_grad():
                renders = render_images(gaussians, pseudo.to(device), train_cfg.background).clamp(0, 1)
            enhanced = enhancer(renders, pseudo, refs.to(device), strength).to(device, torch.float32)
            if enhanced.shape != renders.shape:
                raise ReconError(f"the enhancer returned {tuple(enhanced.shape)} for {tuple(renders.shape)}")
            change = float(psnr_per_image(renders, enhanced.clamp(0, 1)).mean())
            gaussians, loss = train_with_pseudo_views(
                gaussians, cameras, images, train_cfg, cfg.steps_per_round, extent=extent,
                pseudo_cameras=pseudo, pseudo_images=enhanced, pseudo_weight=cfg.pseudo_weight,
                depths=depths, depth_lambda=cfg.depth_lambda, lr_scale=cfg.lr_scale,
                step0=r * cfg.steps_per_round, total=total, seed=cfg.seed,
            )
            metrics["rounds"].append({"round": r, "strength": strength, "pseudo_views": len(pseudo),
                                      "render_vs_enhanced_psnr": change, "loss": loss,
                                      "seconds": time.perf_counter() - tr})
    finally:
        if own:
            enhancer.close()
            del enhancer
    metrics["seconds"] = time.perf_counter() - t0
    metrics["steps"] = total
    return gaussians, metrics


def prior_depths(prior: PriorResult, H: int, W: int) -> Tensor:
    """The prior's z-depth (M, H, W) of each view at the image size (0 where unknown or unconfident).

    Uses ``prior.depth`` when present, else the point maps' z in the prior's cameras; resized with
    nearest neighbours (depth must not be blurred across edges).
    """
    if prior.depth is not None:
        d = prior.depth.float()
    else:
        w2c = prior.cameras.w2c.double()
        M = prior.pointmaps.shape[0]
        flat = prior.pointmaps.double().reshape(M, -1, 3)
        d = torch.stack([transform_points(w2c[m], flat[m])[:, 2] for m in range(M)])
        d = d.reshape(prior.pointmaps.shape[:3]).float()
    d = torch.where(prior.conf > 0, d, torch.zeros_like(d)) if prior.conf is not None else d
    if tuple(d.shape[1:]) != (H, W):
        d = F.interpolate(d[:, None], size=(H, W), mode="nearest")[:, 0]
    return d.clamp_min(0)


class DiffusionRefinement:
    """The refinement stage (:class:`recon.refine.base.RefineStage`) around :func:`run_diffusion_stage`;
    the context's prior, when it covers the scene's cameras, gives the depth-correlation term's depth.
    ``enhancer`` stands in for ``cfg.model`` (tests, custom models)."""

    name = "diffusion"

    def __init__(self, cfg: DiffusionConfig, enhancer: Enhancer | None = None):
        self.cfg = cfg
        self.enhancer = enhancer

    @property
    def active(self) -> bool:
        return self.cfg.model is not None or self.enhancer is not None

    def __call__(self, scene: Scene, ctx: RefineContext) -> tuple[Scene, dict]:
        depths = None
        prior, names = ctx.prior, scene.cameras.names
        covered = prior is not None and set(names) <= set(prior.cameras.names)
        if self.active and covered and self.cfg.depth_lambda > 0:
            order = [prior.cameras.names.index(n) for n in names]
            depths = prior_depths(prior, int(ctx.images.shape[1]), int(ctx.images.shape[2]))[order]
        gaussians, metrics = run_diffusion_stage(
            scene.gaussians, scene.cameras, ctx.images, self.cfg, ctx.train_cfg, extent=ctx.extent,
            depths=depths, enhancer=self.enhancer, log=ctx.log,
        )
        return Scene(gaussians, scene.cameras), metrics
