"""Configuration of the exports (torch-free, so that the CLI builds its parser without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recon.options import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, ranged

ExportFormat = Literal["mesh", "nerfstudio", "splat"]

DEFAULT_NAMES: dict[str, str] = {"mesh": "mesh.ply", "nerfstudio": "nerfstudio", "splat": "point_cloud.splat"}
"""Where each format goes inside the output folder when no ``--to`` is given."""


@dataclass
class MeshConfig:
    """TSDF fusion of rendered depth and colour into a triangle mesh (:mod:`recon.export.mesh`).

    Lengths default to fractions of the fused scene's extent: the half diagonal of the box holding the
    2nd-98th percentiles (per axis) of the points seen through the fused depth maps.
    """

    voxels_per_extent: PositiveFloat = 128.0
    """Voxel size = extent / this (ignored when ``voxel_size`` is set)."""
    voxel_size: ranged(float, 0, lo_open=True, optional=True) = None
    """TSDF voxel edge in world units (overrides ``voxels_per_extent``)."""
    trunc_voxels: PositiveFloat = 4.0
    """Truncation distance of the signed distance, in voxels (ignored when ``sdf_trunc`` is set)."""
    sdf_trunc: ranged(float, 0, lo_open=True, optional=True) = None
    """Truncation distance in world units (overrides ``trunc_voxels``)."""
    interpolate: NonNegativeInt = 1
    """Extra cameras fused between each pair of consecutive training cameras (0: training cameras only);
    they fill in the surfaces that the renders of neighbouring views agree on."""
    min_alpha: Fraction = 0.9
    """Pixels whose accumulated opacity is below this are not fused (background, floaters, edges)."""
    min_views: PositiveInt = 1
    """Voxels updated by fewer views than this are left out of the surface (a multi-view check)."""
    edge_rel_depth: ranged(float, 0) = 0.05
    """Pixels at a depth discontinuity are not fused (the expected depth there blends the two surfaces):
    where the second difference of inverse depth exceeds this fraction of it, and their neighbours
    (planes, however slanted, have none); 0 disables."""
    min_component: Fraction = 0.01
    """Connected components with fewer triangles than this fraction of the mesh are removed (floaters and
    fragments); the largest always stays, so 1 keeps only the largest component and 0 keeps everything.
    Not 1 by default: separate objects are separate components (the demo scene's sphere touches its floor
    in one point), and keeping only the largest drops them."""
    obj: bool = False
    """Also write the mesh as a Wavefront .obj (vertex colours) beside the .ply."""


@dataclass
class NerfstudioConfig:
    """A ``transforms.json`` dataset (:mod:`recon.io.nerfstudio`)."""

    min_opacity: Fraction = 0.1
    """Gaussians below this opacity are left out of the initial point cloud (``ply_file_path``)."""
    max_points: PositiveInt = 200_000
    """Largest number of points in the initial point cloud (a random subset beyond it)."""


@dataclass
class ExportConfig:
    """One export of a reconstruction: which format and its options."""

    format: ExportFormat = "mesh"
    """'mesh' (TSDF fusion -> mesh.ply), 'nerfstudio' (transforms.json + images + point cloud) or 'splat'
    (the 32-byte .splat layout of web splat viewers)."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    nerfstudio: NerfstudioConfig = field(default_factory=NerfstudioConfig)
