"""Configuration of the optimisation stage (torch-free, so that the CLI can build its parser without
loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from recon.options import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    ranged,
)


@dataclass
class DensifyConfig:
    """Densification schedule and thresholds (steps are absolute training steps)."""

    densify_from: NonNegativeInt = 100
    """First step at which Gaussians are densified/pruned."""
    densify_until: NonNegativeInt = 600
    """No densification after this step (3DGS stops halfway through training)."""
    densify_every: PositiveInt = 100
    """Densify/prune every this many steps."""
    grad_threshold: PositiveFloat = 2e-4
    """Mean screen-space position gradient (in NDC units, as 3DGS) above which a Gaussian is densified."""
    dense_percent: PositiveFloat = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller ones cloned."""
    split_factor: PositiveFloat = 1.6
    """Each split child's scales are the parent's divided by this."""
    prune_opacity: Fraction = 0.005
    """Gaussians with opacity below this are pruned."""
    prune_size_frac: PositiveFloat = 0.1
    """After the first opacity reset, Gaussians with a world-space scale above this fraction of the scene
    extent are pruned."""
    prune_screen_px: NonNegativeFloat = 0.0
    """After the first opacity reset, Gaussians whose screen radius exceeded this many pixels are pruned
    (0 disables; 3DGS uses 20 at 800 px)."""
    opacity_reset_every: NonNegativeInt = 300
    """Reset every opacity to at most ``reset_opacity`` every this many steps (0 disables)."""
    reset_opacity: ranged(float, 0, 1, lo_open=True) = 0.01
    """The opacity ceiling applied by a reset."""
    max_gaussians: PositiveInt = 1_000_000
    """Densification stops adding Gaussians beyond this count."""


@dataclass
class TrainConfig:
    """Joint Gaussian + pose optimisation (defaults follow 3DGS's learning rates, compressed to ``iters``)."""

    iters: PositiveInt = 1000
    """Optimisation steps."""
    means_lr: PositiveFloat = 1.6e-4
    """Initial learning rate of the Gaussian centres, times the scene extent (3DGS)."""
    means_lr_final: PositiveFloat = 1.6e-6
    """Final learning rate of the centres (exponential decay over the run), times the scene extent."""
    quats_lr: NonNegativeFloat = 1e-3
    """Learning rate of the Gaussian rotations (quaternions)."""
    scales_lr: NonNegativeFloat = 5e-3
    """Learning rate of the log-scales."""
    opacity_lr: NonNegativeFloat = 5e-2
    """Learning rate of the opacity logits."""
    sh0_lr: NonNegativeFloat = 2.5e-3
    """Learning rate of the DC colour coefficients."""
    shN_lr: NonNegativeFloat = 2.5e-3 / 20
    """Learning rate of the higher-order SH coefficients."""
    sh_degree: ranged(int, 0, 3) = 0
    """Maximum spherical-harmonic degree of the colours. 0 (view-independent colour) by default: a handful
    of views cannot pin view-dependent colour down (it overfits them), and degree 3 costs about a third
    more per step. Measured on llff_fern's 3 views: held-out PSNR 20.73 dB with degree 3 and
    full-resolution steps, 20.86-20.89 with degree 0 and the cheap steps."""
    sh_increase_every: NonNegativeInt = 200
    """Raise the active SH degree by one every this many steps (0: use ``sh_degree`` from the start)."""
    optimize_gaussians: bool = True
    """Optimise the Gaussians (off: they are frozen and only the poses move, e.g. fitting held-out views)."""
    optimize_poses: bool = True
    """Refine the camera poses jointly with the Gaussians."""
    pose_lr: NonNegativeFloat = 1e-3
    """Initial learning rate of the pose deltas (radians; translation in units of the scene extent).
    Adam moves each pose by about this much per step whatever the gradient's size, so it bounds how far
    noisy early gradients can drag a good prior. Measured with the classical prior on 3 real views
    (relative rotation error prior -> optimised, 1000 steps): 1e-3 -> 1e-4 stays within 0.1 deg of the
    prior (llff_fern 0.23 -> 0.21 deg, strecha_fountain-P11 0.39 -> 0.49, dtu_scan24 1.06 -> 1.01) and
    fits the images better, where 1e-2 -> 1e-4 let the poses drift (with the earlier, unguided prior:
    strecha 0.46 -> 20 deg, dtu 2.3 -> 5.7). On the synthetic scene it corrects 3 deg / 5% errors to
    0.2 deg."""
    pose_lr_final: NonNegativeFloat = 1e-4
    """Final pose learning rate (exponential decay over the run)."""
    pose_warmup: NonNegativeInt = 0
    """Ramp the pose learning rate up linearly over this many first steps."""
    pose_reg: NonNegativeFloat = 0.0
    """Weight of an L2 penalty on the pose deltas (keeps poses near the prior's)."""
    fix_first_pose: bool = False
    """Keep the first camera at its initial pose (removes the gauge freedom of the joint problem)."""
    ssim_lambda: Fraction = 0.2
    """Weight of D-SSIM in the photometric loss (1 - l) * L1 + l * (1 - SSIM)."""
    depth_lambda: NonNegativeFloat = 0.0
    """Weight of the Pearson depth-correlation loss (only when depth priors are passed to ``train``)."""
    densify: bool = False
    """Densify and prune Gaussians during training (simplified 3DGS strategy)."""
    densify_cfg: DensifyConfig = field(default_factory=DensifyConfig)
    """Densification schedule and thresholds."""
    background: ranged(float, 0, 1, count=3) = (0.0, 0.0, 0.0)
    """Background colour behind the Gaussians (RGB in [0, 1])."""
    coarse_levels: NonNegativeInt = 2
    """Coarse-to-fine: the first ``coarse_fraction`` of the steps render images downsampled by 2^k,
    k = coarse_levels .. 1 (equal shares, coarsest first), the rest at full resolution. A step at half
    resolution costs about a quarter, and the low-frequency fit it starts with is what the early steps
    achieve anyway (0: always full resolution)."""
    coarse_fraction: Fraction = 0.4
    """Share of the steps spent at the coarse levels."""
    coarse_min_side: PositiveInt = 128
    """Coarse levels whose long side would fall below this many pixels are skipped (too little left to
    fit; small images train at full resolution throughout)."""
    crop_until: Fraction = 0.8
    """After the coarse levels and until this share of the steps, each step renders a random window of
    the full-resolution images (``crop_scale`` of each side) instead of the whole images: full-resolution
    detail at the cost of a coarse step; the steps after it see whole images (0: no crops)."""
    crop_scale: ranged(float, 0, 1, lo_open=True) = 0.5
    """Side of the random window as a fraction of the image side (no crops where the window's long side
    would be under ``coarse_min_side``)."""
    batch_size: PositiveInt = 1
    """Views rendered per step (random order without replacement, reshuffled every epoch)."""
    scene_extent: NonNegativeFloat = 0.0
    """Length scale for position learning rates and thresholds; 0 computes it from cameras and Gaussians."""
    seed: Seed = 0
    """Seed of all randomness in training (view order, splits)."""
    checkpoint_every: NonNegativeInt = 500
    """Write a resumable checkpoint every this many steps when a checkpoint folder is given (0: never)."""
    log_every: PositiveInt = 10
    """Append mean loss/PSNR of the last steps to the history every this many steps."""
    callback_every: NonNegativeInt = 10
    """Call the training callback (e.g. the live viewer) every this many steps."""
