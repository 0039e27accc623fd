"""The input of the pipeline: images, their names and (when a dataset has them) reference cameras."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recon.cameras import Cameras


@dataclass
class Views:
    """Images in, as loaded by :mod:`recon.io`.

    Attributes:
        images: (N, H, W, 3) float32 in [0, 1]; all views share one size.
        names: N image file names (no folders), in the dataset's order.
        cameras: reference cameras from the dataset (K scaled to ``images``), or None for a plain folder.
        exif_focal_px: per view focal length in pixels of ``images`` from EXIF, or None when unknown.
        source: the detected format ("folder", "colmap", "llff", "nerf", "middlebury", "dtu", "strecha",
            "synthetic").
        root: the folder the views came from ("" for generated ones).
        meta: format-specific notes (e.g. {"distortion": ...}, LLFF "bounds").
        files: the image file of each view (empty for views not loaded from files); the run manifest
            records their contents.
    """

    images: torch.Tensor
    names: list[str]
    cameras: Cameras | None = None
    exif_focal_px: list[float | None] | None = None
    source: str = "folder"
    root: str = ""
    meta: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {tuple(self.images.shape)}")
        if len(self.names) != self.images.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.images.shape[0]} images")
        if self.cameras is not None and len(self.cameras) != len(self.names):
            raise ValueError(f"{len(self.cameras)} reference cameras for {len(self.names)} images")
        if self.files and len(self.files) != len(self.names):
            raise ValueError(f"{len(self.files)} files for {len(self.names)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    def subset(self, idx: list[int] | list[str]) -> Views:
        """The views at integer indices or names ``idx``, in that order (reference cameras follow)."""
        ids = [self.names.index(i) if isinstance(i, str) else int(i) for i in idx]
        t = torch.as_tensor(ids, dtype=torch.long)
        return Views(
            images=self.images[t],
            names=[self.names[i] for i in ids],
            cameras=None if self.cameras is None else self.cameras.subset(ids),
            exif_focal_px=None if self.exif_focal_px is None else [self.exif_focal_px[i] for i in ids],
            source=self.source,
            root=self.root,
            meta=dict(self.meta),
            files=[self.files[i] for i in ids] if self.files else [],
        )
