"""Configuration of the classical prior (torch-free: the CLI builds its parser from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from recon.errors import ReconError
from recon.options import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ranged


@dataclass
class SfMConfig:
    """Options of the classical structure-from-motion stage. Pixel thresholds are given for a 1000-pixel
    long image side and scale with the image (never below ``min_thresh_px``)."""

    max_features: PositiveInt = 8192
    """Plain SIFT keypoints kept per image (strongest first)."""
    affine_features: NonNegativeInt = 8192
    """Extra keypoints from affine-simulated views (ASIFT) per image; used only for few views."""
    affine_max_views: NonNegativeInt = 8
    """Use affine simulation when there are at most this many views (sparse captures are wide-baseline)."""
    affine_max_tilt: NonNegativeInt = 2
    """Largest simulated tilt exponent k (tilt sqrt(2)^k)."""
    ratio: ranged(float, 0, 1, lo_open=True) = 0.85
    """Lowe ratio for descriptor matching (applied on top of mutual nearest neighbours)."""
    thresh_px: PositiveFloat = 1.0
    """RANSAC (MAGSAC++ maximum sigma) threshold in pixels at a 1000-pixel long side."""
    min_thresh_px: PositiveFloat = 0.75
    """Floor of the scaled RANSAC threshold (SIFT keypoints are not more precise than this)."""
    reproj_factor: PositiveFloat = 4.0
    """Triangulation / bundle-adjustment outlier threshold, in multiples of the RANSAC threshold."""
    ransac_confidence: ranged(float, 0, 1, lo_open=True, hi_open=True) = 0.9999
    ransac_max_iters: PositiveInt = 10000
    min_inliers: ranged(int, 8) = 30
    """Two-view inliers for a pair to count as overlapping (below it, matches are likely chance)."""
    exhaustive_max: ranged(int, 2) = 15
    """Match all pairs up to this many views; beyond, a sequential window plus retrieval graph."""
    window: PositiveInt = 5
    retrieval_k: PositiveInt = 5
    fov_range_deg: ranged(float, 0, 180, lo_open=True, hi_open=True, count=2) = (15.0, 120.0)
    """Field-of-view range (over the long side) of the focal self-calibration sweep."""
    focal_sweep_pairs: PositiveInt = 5
    """Pairs (most inliers first) whose essential-matrix inliers are counted over a sweep of focals."""
    focal_support: ranged(float, 0, 1, lo_open=True) = 0.95
    """Focals whose mean relative inlier count reaches this fraction of the best are consistent with the
    matches; a self-calibrated focal outside that set is rejected."""
    min_tri_angle_deg: NonNegativeFloat = 1.0
    """Points whose viewing rays meet at a smaller angle have unreliable depth and are not triangulated."""
    init_angle_deg: PositiveFloat = 5.0
    """Median triangulation angle at which an initial pair stops gaining score for its baseline."""
    init_attempts: PositiveInt = 3
    """Initial pairs tried (best first) when one does not register every view."""
    pnp_min_inliers: ranged(int, 4) = 15
    min_scale_points: PositiveInt = 3
    """Points shared with the reconstruction needed to place a view from its essential matrix when PnP
    has too few (only the baseline length is unknown then)."""
    max_pair_rotation_change_deg: NonNegativeFloat = 10.0
    """How far refining such a view on the shared points may rotate it away from the pair's estimate."""
    ba_loss: str = "soft_l1"
    """scipy.optimize.least_squares robust loss of bundle adjustment."""
    ba_max_nfev: PositiveInt = 40
    refine_focal: bool = True
    """Refine the shared focal in the final bundle adjustment (with >= 3 placed views)."""
    guided_rounds: NonNegativeInt = 2
    """Rounds of guided matching once three or more views are placed: every matched pair of placed views
    (including pairs that failed verification) is matched again along the epipolar lines of the current
    cameras, and the model is re-triangulated and bundle-adjusted on the new tracks (0 disables)."""
    guided_converged_deg: NonNegativeFloat = 0.05
    """Guided matching stops before ``guided_rounds`` once a round rotated no camera by more than this many
    degrees..."""
    guided_converged_focal: NonNegativeFloat = 0.002
    """...and changed the focal by less than this fraction: the next round would re-find the same
    matches (each round costs a full guided matching of every pair)."""
    guided_epipolar_factor: PositiveFloat = 3.0
    """Guided matching accepts keypoints within this many RANSAC thresholds of the epipolar line."""
    guided_depth_margin: NonNegativeFloat = 0.25
    """Guided matches must triangulate within the depth range of the points found before them (1st-99th
    percentile per view) widened by this fraction: a wrong match on repeated texture along the epipolar
    line triangulates without error, but at a depth where the scene is not."""
    verify_rotation_deg: NonNegativeFloat = 5.0
    """A verified pair disagrees with the placed cameras when their relative rotations differ by more than
    this (a pair's own essential matrix is accurate to about a degree: more is a wrong pair or a wrong
    placement; see ``recon/priors/classical/verify.py``)..."""
    verify_direction_deg: NonNegativeFloat = 15.0
    """...or their baseline directions by more than this, for pairs whose median triangulation angle is
    at least ``verify_min_tri_angle_deg`` (below it the direction is not determined)."""
    verify_min_tri_angle_deg: NonNegativeFloat = 2.0
    verify_alternatives: NonNegativeInt = 3
    """Alternative models (without the disagreeing pairs) grown when pairs disagree (0: none)."""


@dataclass
class DenseConfig:
    """Options of :func:`dense_pointmaps` (pixel quantities are at the reduced resolution)."""

    max_side: ranged(int, 16) = 320
    """Long side (px) of the working resolution; images larger than this are downscaled, never upscaled."""
    n_planes: NonNegativeInt = 0
    """Depth planes per reference view; 0 picks them from the geometry (see ``plane_step_px``)."""
    plane_step_px: PositiveFloat = 1.0
    """With ``n_planes=0``: planes are spaced so that consecutive ones move a source pixel by about this."""
    min_planes: ranged(int, 3) = 48
    """Lower clamp of the automatic plane count."""
    max_planes: ranged(int, 3) = 192
    """Upper clamp of the automatic plane count (bounds the runtime for huge depth ranges)."""
    window: ranged(int, 3) = 7
    """Side of the square NCC window (odd)."""
    n_neighbors: PositiveInt = 4
    """Source views per reference view (the best by triangulation angle when not given)."""
    top_k: PositiveInt = 2
    """Per pixel and plane, average the best ``top_k`` NCC scores of the sources that see the window."""
    aggregate_window: PositiveInt = 3
    """Extra box filter (odd side, 1 = off) over the aggregated score volume before winner-take-all."""
    ncc_min: ranged(float, -1, 1) = 0.3
    """Aggregated NCC below this is rejected; it maps to confidence 0."""
    ncc_good: ranged(float, -1, 1) = 0.8
    """Aggregated NCC at which the photometric confidence term saturates at 1."""
    ratio_good: ranged(float, 1, lo_open=True) = 1.5
    """Second-best / best cost ratio at which the uniqueness term saturates at 1 (1 maps to 0)."""
    uniqueness_planes: NonNegativeInt = 3
    """The second-best cost is searched outside +-this many planes of the winner."""
    min_texture_std: NonNegativeFloat = 0.01
    """Reference windows with an intensity standard deviation below this are textureless: rejected."""
    consistency_px: PositiveFloat = 1.0
    """Forward-backward reprojection error (px) under which a source view agrees with a depth."""
    consistency_rel_depth: PositiveFloat = 0.01
    """Relative depth difference under which a source view agrees with a depth."""
    min_consistent: PositiveInt = 1
    """Source views that must agree for a pixel to be kept (>= 1: unverified depths are never kept)."""
    consistent_target: PositiveInt = 2
    """Agreeing views at which the multi-view confidence term saturates at 1."""
    neighbor_angle_deg: PositiveFloat = 5.0
    """Preferred triangulation angle for automatic neighbour selection (MVSNet's scoring)."""
    chunk_planes: PositiveInt = 8
    """Planes warped per vectorised step (memory ~ chunk * n_sources * h * w * 4 floats)."""

    def validate(self) -> None:
        """Raise :class:`ReconError` for settings that cannot work."""
        if self.max_side < 16:
            raise ReconError(f"dense.max_side must be >= 16 px, got {self.max_side}")
        if self.window < 3 or self.window % 2 == 0:
            raise ReconError(f"dense.window must be an odd number >= 3, got {self.window}")
        if self.aggregate_window < 1 or self.aggregate_window % 2 == 0:
            raise ReconError(f"dense.aggregate_window must be odd and >= 1, got {self.aggregate_window}")
        if self.n_planes < 0 or (self.n_planes and self.n_planes < 3):
            raise ReconError(f"dense.n_planes must be 0 (automatic) or >= 3, got {self.n_planes}")
        if not 3 <= self.min_planes <= self.max_planes:
            raise ReconError("dense.min_planes must be >= 3 and <= dense.max_planes")
        if min(self.n_neighbors, self.top_k, self.min_consistent, self.consistent_target) < 1:
            raise ReconError("dense.n_neighbors, top_k, min_consistent and consistent_target must be >= 1")
        if not -1.0 <= self.ncc_min < self.ncc_good <= 1.0:
            raise ReconError("dense.ncc_min must be < dense.ncc_good, both in [-1, 1]")
        if self.ratio_good <= 1.0:
            raise ReconError(f"dense.ratio_good must be > 1, got {self.ratio_good}")


@dataclass
class ClassicalConfig:
    sfm: SfMConfig = field(default_factory=SfMConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
