"""The Gaussian parameter container (raw, optimisable parameters as in CONVENTIONS)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from recon.cameras import quat_normalize

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC SH coefficient (..., 3) whose evaluated colour (C0 * sh0 + 0.5) equals ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass
class Gaussians:
    """N 3D Gaussians, stored as raw parameters.

    Attributes:
        means: (N, 3) world positions.
        quats: (N, 4) rotations (w, x, y, z), not necessarily normalised.
        log_scales: (N, 3) log of the standard deviations along the local axes.
        opacity_logits: (N,) logit of opacity.
        sh0: (N, 1, 3) DC spherical-harmonic coefficients.
        shN: (N, K, 3) higher-order coefficients, K = (degree + 1)^2 - 1 (K = 0 for degree 0).
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                got = tuple(getattr(self, name).shape)
                raise ValueError(f"Gaussians.{name} has shape {got}, want {shape}")
        if self.sh0.shape != (n, 1, 3) or self.shN.dim() != 3 or self.shN.shape[0] != n:
            raise ValueError(f"bad SH shapes sh0 {tuple(self.sh0.shape)} shN {tuple(self.shN.shape)}")
        k = self.shN.shape[1] + 1
        if round(k**0.5) ** 2 != k:
            raise ValueError(f"shN has {self.shN.shape[1]} coefficients; need (d+1)^2-1")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return round((self.shN.shape[1] + 1) ** 0.5) - 1

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh(self) -> torch.Tensor:
        """(N, (degree+1)^2, 3) all SH coefficients."""
        return torch.cat([self.sh0, self.shN], dim=1)

    def activated(self) -> dict[str, torch.Tensor]:
        """What the rasteriser takes: means, normalised quats, scales, opacities, SH coefficients."""
        return {
            "means": self.means,
            "quats": quat_normalize(self.quats),
            "scales": self.scales,
            "opacities": self.opacities,
            "sh": self.sh,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> Gaussians:
        """A new container with ``fn`` applied to every tensor (e.g. detach, index, to(device))."""
        return Gaussians(**{k: fn(v) for k, v in self.tensors().items()})

    def detach(self) -> Gaussians:
        return self.map(lambda t: t.detach().clone())

    def to(self, device) -> Gaussians:
        return self.map(lambda t: t.to(device))

    def select(self, mask_or_idx: torch.Tensor) -> Gaussians:
        return self.map(lambda t: t[mask_or_idx])

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        names = [f.name for f in fields(Gaussians)]
        return Gaussians(**{n: torch.cat([getattr(g, n) for g in items]) for n in names})
