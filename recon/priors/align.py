"""Global alignment of pairwise point maps (DUSt3R/MASt3R-style priors) into one world frame.

A pairwise network sees views (i, j) and returns both views' point maps in view i's camera frame:
``X[e][i]`` (H, W, 3) and ``X[e][j]`` with confidences. This module finds, for every view v, a z-depth map
D_v, a focal f_v (principal point at the image centre) and a camera-to-world pose, and for every edge e
a similarity (s_e, R_e, t_e) placing the pair's frame in the world, minimising

    sum_e sum_{v in e} sum_pixels conf[e][v] * || c2w_v(unproject(D_v, f_v)) - (s_e R_e X[e][v] + t_e) ||

(our own formulation of the standard objective). Initialisation: a maximum spanning tree over edges
weighted by confidence; walking the tree, each new edge's similarity comes from Umeyama between the
points it shares with the already placed view; focals from a closed-form fit of each point map to its
pixel grid; poses from Procrustes between a view's camera-frame points and its world points.
The world frame is the first view's camera frame, and the scale is fixed by keeping the mean log edge
scale at its initial value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recon.cameras import (
    Cameras,
    invert_rigid,
    make_rigid,
    pixel_centers,
    quat_to_rotmat,
    rotmat_to_quat,
    umeyama,
)
from recon.priors.config import AlignConfig


@dataclass
class PairPrediction:
    """One network output for the ordered pair (i, j), both point maps in view i's camera frame.

    pts_i, pts_j: (H, W, 3); conf_i, conf_j: (H, W) >= 0 (DUSt3R's 1 + exp(.) confidences are fine).
    """

    i: int
    j: int
    pts_i: torch.Tensor
    pts_j: torch.Tensor
    conf_i: torch.Tensor
    conf_j: torch.Tensor


@dataclass
class AlignResult:
    """Per-view outputs for views 0..N-1 at the pairwise point-map resolution (H, W).

    c2w (N,4,4), focal (N,), depth (N,H,W), pointmaps (N,H,W,3) world, conf (N,H,W) (best over the edges
    containing the view), plus the final loss and the spanning-tree edge order.
    """

    c2w: torch.Tensor
    focal: torch.Tensor
    depth: torch.Tensor
    pointmaps: torch.Tensor
    conf: torch.Tensor
    loss: float
    tree: list[tuple[int, int]] = field(default_factory=list)

    def cameras(self, width: int, height: int, names: list[str]) -> Cameras:
        """Cameras for images of (width, height) = the point-map resolution."""
        n = self.c2w.shape[0]
        K = torch.zeros(n, 3, 3)
        K[:, 0, 0] = self.focal
        K[:, 1, 1] = self.focal
        K[:, 0, 2] = width / 2
        K[:, 1, 2] = height / 2
        K[:, 2, 2] = 1
        return Cameras(K, invert_rigid(self.c2w.float()), torch.tensor([[width, height]] * n), names)


def _weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x)
    cw = torch.cumsum(w[order], 0)
    k = int(torch.searchsorted(cw, cw[-1] * 0.5).clamp(max=x.numel() - 1))
    return x[order][k]


def estimate_focal(pts_cam: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Focal (pixels) that best maps camera-frame points (H, W, 3) to their pixels, centre principal point.

    Each pixel away from the centre gives an estimate f_p = <q, uv> / <q, q> with q = (x/z, y/z) and uv
    the pixel's offset from the centre; the confidence-weighted median of those is robust to outliers.
    """
    H, W = pts_cam.shape[:2]
    uv = pixel_centers(H, W, dtype=pts_cam.dtype, device=pts_cam.device) - torch.tensor(
        [W / 2, H / 2], dtype=pts_cam.dtype, device=pts_cam.device
    )
    z = pts_cam[..., 2:3]
    q = pts_cam[..., :2] / z.clamp_min(1e-6)
    qq = (q * q).sum(-1)
    f = (q * uv).sum(-1) / qq.clamp_min(1e-12)
    valid = (z[..., 0] > 1e-6) & (conf > 0) & (uv.norm(dim=-1) > 0.1 * min(H, W)) & (f > 0)
    if valid.sum() < 10:
        return torch.tensor(float(max(H, W)), dtype=pts_cam.dtype)  # ~53 degree field of view
    return _weighted_median(f[valid], conf[valid]).clamp_min(1e-3)


def robust_umeyama(
    X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, iters: int = 4, keep: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity with Y ~= s R X + t from corresponding points (M, 3) with weights w (M,).

    Starts from the most confident half, then repeatedly refits on the ``keep`` fraction with the smallest
    residuals, so gross outliers in either point map do not bias the fit.
    """
    X, Y = X.reshape(-1, 3).double(), Y.reshape(-1, 3).double()
    w = w.reshape(-1).double()
    ok = torch.isfinite(X).all(1) & torch.isfinite(Y).all(1) & (w > 0)
    X, Y, w = X[ok], Y[ok], w[ok]
    sel = w >= w.median()
    s, R, t = umeyama(X[sel], Y[sel])
    for _ in range(iters):
        r = (s * X @ R.T + t - Y).norm(dim=1)
        sel = r <= torch.quantile(r, keep) if r.numel() < 16_000_000 else r <= r.median()
        s, R, t = umeyama(X[sel], Y[sel])
    return s, R, t


def _depth_rays(H: int, W: int, focal: torch.Tensor) -> torch.Tensor:
    """Rays (N, H, W, 3) with z = 1 for per-view focals (N,), principal point at the centre."""
    uv = pixel_centers(H, W, dtype=focal.dtype, device=focal.device) - torch.tensor(
        [W / 2, H / 2], dtype=focal.dtype, device=focal.device
    )
    xy = uv[None] / focal[:, None, None, None]
    return torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)


def _max_spanning_tree(n: int, edges: list[tuple[int, int, float]]) -> list[tuple[int, int, int]]:
    """Prim's algorithm from view 0 on undirected edges (i, j, weight); returns (edge index, from, to)."""
    placed = {0}
    order: list[tuple[int, int, int]] = []
    while len(placed) < n:
        best = None
        for k, (i, j, w) in enumerate(edges):
            if (i in placed) != (j in placed):
                if best is None or w > best[0]:
                    best = (w, k, i if i in placed else j, j if i in placed else i)
        if best is None:
            break  # disconnected: remaining views cannot be placed
        order.append((best[1], best[2], best[3]))
        placed.add(best[3])
    return order


def _view_in_edge(p: PairPrediction, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (p.pts_i, p.conf_i) if v == p.i else (p.pts_j, p.conf_j)


def initialize(n: int, preds: list[PairPrediction], cfg: AlignConfig):
    """Spanning-tree initialisation: edge similarities (s, R, t), per-view focal, c2w and depth."""
    H, W = preds[0].pts_i.shape[:2]
    # Score each undirected view pair by its best directed prediction's mean confidence.
    weights = [float((p.conf_i.mean() * p.conf_j.mean()).sqrt()) for p in preds]
    order = _max_spanning_tree(n, [(p.i, p.j, w) for p, w in zip(preds, weights, strict=True)])
    # World points of each placed view, from the edge that placed it (first edge: identity similarity).
    world: dict[int, torch.Tensor] = {}
    edge_sim: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    eye = torch.eye(3, dtype=torch.float64)
    if order:
        # The first edge's frame is the provisional world; the gauge is fixed to view 0 at the end.
        p0 = preds[order[0][0]]
        one, zero = torch.tensor(1.0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        edge_sim[order[0][0]] = (one, eye, zero)
        world[p0.i] = p0.pts_i.double()
        world[p0.j] = p0.pts_j.double()
    for k, a, b in order[1:]:
        p = preds[k]
        X_a, c_a = _view_in_edge(p, a)
        s, R, t = robust_umeyama(X_a, world[a], c_a)
        edge_sim[k] = (s, R, t)
        X_b, _ = _view_in_edge(p, b)
        world[b] = s * X_b.double() @ R.T + t
    # Every edge not in the tree gets its similarity from its already placed views.
    for k, p in enumerate(preds):
        if k in edge_sim or p.i not in world or p.j not in world:
            continue
        X = torch.cat([p.pts_i, p.pts_j]).double().reshape(-1, 3)
        Y = torch.cat([world[p.i], world[p.j]]).reshape(-1, 3)
        edge_sim[k] = robust_umeyama(X, Y, torch.cat([p.conf_i, p.conf_j]))
    # Focal and pose per view from the edge where it is the first view (its own camera frame).
    focal = torch.ones(n, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    depth = torch.ones(n, H, W, dtype=torch.float64)
    for v in range(n):
        own = [k for k, p in enumerate(preds) if p.i == v and k in edge_sim]
        if not own or v not in world:
            continue
        k = max(own, key=lambda k: float(preds[k].conf_i.mean()))
        p = preds[k]
        s, R, t = edge_sim[k]
        focal[v] = estimate_focal(p.pts_i.double(), p.conf_i.double())
        # The edge frame is view v's camera frame up to the edge similarity: c2w = (s R, t) with scale
        # folded into depth.
        c2w[v] = make_rigid(R, t)
        depth[v] = (s * p.pts_i[..., 2].double()).clamp_min(1e-4)
    if cfg.shared_focal:
        focal[:] = focal.median()
    # Gauge: express everything in view 0's camera frame (X' = G X with G = inverse of view 0's c2w).
    G = invert_rigid(c2w[0].clone())
    c2w = G @ c2w
    for k, (s, R, t) in edge_sim.items():
        edge_sim[k] = (s, G[:3, :3] @ R, G[:3, :3] @ t + G[:3, 3])
    return edge_sim, focal, c2w, depth, order


def _edge_data(
    preds: list[PairPrediction], edges: list[int], device: torch.device, cfg: AlignConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges' data stacked as (E, 2, H, W, ...), slot 0 the pair's first view and slot 1 its second:
    views (E, 2), points X (E, 2, H, W, 3), confidences (E, 2, H, W) (clamped at 1e3) and their loss
    weights (``conf ** conf_power`` above ``conf_min``, else 0)."""
    views = torch.tensor([[preds[k].i, preds[k].j] for k in edges], device=device)
    X = torch.stack([torch.stack([preds[k].pts_i, preds[k].pts_j]) for k in edges]).to(device, torch.float32)
    conf = torch.stack([torch.stack([preds[k].conf_i, preds[k].conf_j]) for k in edges])
    conf = conf.to(device, torch.float32).clamp(max=1e3)
    weight = torch.where(conf > cfg.conf_min, conf**cfg.conf_power, torch.zeros_like(conf))
    return views, X, conf, weight


def _view_conf(n: int, views: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Confidence (N, H, W) of each view: the best over the edges that contain it."""
    best = torch.zeros(n, *conf.shape[-2:], device=conf.device)
    for e in range(views.shape[0]):
        for slot in range(2):
            v = int(views[e, slot])
            best[v] = torch.maximum(best[v], conf[e, slot])
    return best


def global_align(n: int, preds: list[PairPrediction], cfg: AlignConfig | None = None) -> AlignResult:
    """Align pairwise predictions over ``n`` views; every view must appear as the first view of some pair
    (run the network on both orders (i, j) and (j, i), as the standard symmetric pair graph does).

    The initialisation runs on the CPU in float64; the optimisation runs in float32 on the predictions'
    device, vectorised over all edges (one residual tensor of shape (E, 2, H, W)).
    """
    cfg = cfg or AlignConfig()
    device = preds[0].pts_i.device
    H, W = preds[0].pts_i.shape[:2]
    cpu_preds = [
        PairPrediction(p.i, p.j, p.pts_i.cpu(), p.pts_j.cpu(), p.conf_i.cpu(), p.conf_j.cpu()) for p in preds
    ]
    edge_sim, focal0, c2w0, depth0, order = initialize(n, cpu_preds, cfg)
    edges = sorted(edge_sim)

    def param(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
        return t.to(device=device, dtype=torch.float32).clone().requires_grad_(grad)

    log_depth = param(torch.log(depth0))
    log_focal = param(torch.log(focal0), cfg.optimize_focal)
    q_view = param(rotmat_to_quat(c2w0[:, :3, :3]))
    t_view = param(c2w0[:, :3, 3])
    log_s = param(torch.stack([torch.log(edge_sim[k][0]) for k in edges]))
    q_edge = param(torch.stack([rotmat_to_quat(edge_sim[k][1]) for k in edges]))
    t_edge = param(torch.stack([edge_sim[k][2] for k in edges]))
    mean_log_s0 = log_s.detach().mean()

    views, X, conf, weight = _edge_data(preds, edges, device, cfg)
    norm = float(weight.sum()) or 1.0

    def world_points(log_depth, log_focal, q_view, t_view):
        rays = _depth_rays(H, W, torch.exp(log_focal))
        pts_cam = rays * torch.exp(log_depth)[..., None]
        R = quat_to_rotmat(q_view)
        return pts_cam @ R.transpose(-1, -2)[:, None] + t_view[:, None, None, :]

    def loss_fn():
        P = world_points(log_depth, log_focal, q_view, t_view)  # (N, H, W, 3)
        scale = torch.exp(log_s - log_s.mean() + mean_log_s0)  # scale gauge: mean log scale fixed
        R_e = quat_to_rotmat(q_edge)  # (E, 3, 3)
        pred = scale[:, None, None, None, None] * torch.einsum("eij,evhwj->evhwi", R_e, X)
        pred = pred + t_edge[:, None, None, None, :]
        return (weight * (P[views] - pred).norm(dim=-1)).sum() / norm

    params = [log_depth, q_view, t_view, log_s, q_edge, t_edge] + ([log_focal] if cfg.optimize_focal else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.iters, 1), eta_min=cfg.lr * 0.01)
    identity_q = torch.tensor([1.0, 0.0, 0.0, 0.0], device=device)
    for _ in range(cfg.iters):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            # Gauge: the first view stays at the origin with identity rotation.
            q_view[0] = identity_q
            t_view[0] = 0
            if cfg.shared_focal and cfg.optimize_focal:
                log_focal[:] = log_focal.mean()
    with torch.no_grad():
        loss = float(loss_fn())
        P = world_points(log_depth, log_focal, q_view, t_view)
        c2w = make_rigid(quat_to_rotmat(q_view), t_view)
    return AlignResult(
        c2w=c2w.float(),
        focal=torch.exp(log_focal.detach()).float(),
        depth=torch.exp(log_depth.detach()).float(),
        pointmaps=P.float(),
        conf=_view_conf(n, views, conf),
        loss=loss,
        tree=[(a, b) for _, a, b in order],
    )
