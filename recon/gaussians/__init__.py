"""Gaussian parameters, their initialisation from point clouds / point maps, densification."""

from recon.gaussians.init import InitConfig, InitStats, init_from_points, init_from_prior
from recon.gaussians.model import SH_C0, Gaussians, num_sh_bases, rgb_to_sh0, sh0_to_rgb

__all__ = [
    "SH_C0",
    "Gaussians",
    "InitConfig",
    "InitStats",
    "init_from_points",
    "init_from_prior",
    "num_sh_bases",
    "rgb_to_sh0",
    "sh0_to_rgb",
]
