"""A simplified 3DGS densification strategy: clone / split / prune / opacity reset, off by default.

Gaussians whose screen-space position gradient is large on average are under-reconstructing: small ones
are cloned (more Gaussians where detail is missing), large ones split into two smaller ones. Transparent
and oversized Gaussians are pruned, and opacities are periodically reset so that floaters must earn their
opacity back. Whenever the set changes, the Adam state of every parameter is carried over for the
survivors and zeroed for the newcomers, so the optimiser stays consistent with the parameters.

The trainer owns the parameters (a dict of leaf tensors named like :class:`~recon.gaussians.Gaussians`
fields) and one Adam param group per tensor; this module edits both in place.
"""

from __future__ import annotations

import math

import torch

from recon.cameras import quat_to_rotmat
from recon.optim.config import DensifyConfig

Tensor = torch.Tensor


def _replace_param(params: dict[str, Tensor], optimizer: torch.optim.Optimizer, name: str, value: Tensor,
                   state_fn) -> None:
    """Swap ``params[name]`` for a new leaf ``value`` and map its Adam moments with ``state_fn(moment)``."""
    old = params[name]
    new = value.detach().requires_grad_(True)
    for group in optimizer.param_groups:
        if group["params"][0] is old:
            group["params"][0] = new
            state = optimizer.state.pop(old, None)
            if state:
                # Per-row moments follow the rows; scalars such as Adam's "step" are kept.
                optimizer.state[new] = {
                    k: (state_fn(v) if torch.is_tensor(v) and v.shape == old.shape else v)
                    for k, v in state.items()
                }
            break
    else:  # pragma: no cover - the trainer always registers every parameter
        raise KeyError(f"parameter {name!r} is not in the optimizer")
    params[name] = new


def gather_and_append(params: dict[str, Tensor], optimizer: torch.optim.Optimizer, keep: Tensor,
                      extra: dict[str, Tensor] | None = None) -> None:
    """Keep rows ``keep`` (long indices) of every parameter and append ``extra`` rows (same names).

    Adam moments follow their rows; appended rows start with zero moments.
    """
    for name in list(params):
        old = params[name].detach()
        add = None if extra is None else extra[name].to(old.dtype)
        value = old[keep] if add is None else torch.cat([old[keep], add])

        def state_fn(m: Tensor, add=add) -> Tensor:
            kept = m[keep]
            return kept if add is None else torch.cat([kept, torch.zeros_like(add)])

        _replace_param(params, optimizer, name, value, state_fn)


class DensifyStrategy:
    """Accumulates screen-space gradients during training and densifies / prunes on schedule.

    Usage per step: render, backward, :meth:`accumulate` (needs ``means2d.grad``), optimizer step, then
    :meth:`step`. All randomness (split sampling) comes from the ``generator`` passed to :meth:`step`.
    """

    def __init__(self, cfg: DensifyConfig, scene_extent: float, n: int, device=None):
        self.cfg = cfg
        self.extent = float(scene_extent)
        self.grad_accum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)
        self.resets_done = 0

    # ---- state for checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "grad_accum": self.grad_accum, "count": self.count, "max_radii": self.max_radii,
            "resets_done": self.resets_done,
        }

    def load_state_dict(self, state: dict) -> None:
        self.grad_accum = state["grad_accum"]
        self.count = state["count"]
        self.max_radii = state["max_radii"]
        self.resets_done = int(state["resets_done"])

    # ---- per step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, means2d: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Add this step's screen-space gradient norms of visible Gaussians.

        ``means2d`` (C, N, 2) pixels with ``.grad`` from a loss averaged over the C views; ``radii`` (C, N)
        or (C, N, 2) pixels, > 0 where visible. Gradients are converted to NDC units (x W/2, x H/2) and
        multiplied by C to undo the batch mean, so the threshold does not depend on resolution or batch.
        """
        if means2d.grad is None:
            return
        c = means2d.shape[0]
        g = means2d.grad.detach().clone()
        g[..., 0] *= 0.5 * width * c
        g[..., 1] *= 0.5 * height * c
        r = radii.detach()
        if r.dim() == 3:
            r = r.amax(-1)
        r = r.to(g.dtype)
        visible = r > 0
        self.grad_accum += torch.where(visible, g.norm(dim=-1), torch.zeros_like(r)).sum(0)
        self.count += visible.to(g.dtype).sum(0)
        self.max_radii = torch.maximum(self.max_radii, r.amax(0))

    def step(self, step: int, params: dict[str, Tensor], optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> dict[str, int]:
        """Densify/prune/reset if ``step`` (1-based count of finished steps) is on the schedule.

        Returns counts of what happened (empty dict when nothing was due).
        """
        cfg = self.cfg
        out: dict[str, int] = {}
        if cfg.densify_from <= step <= cfg.densify_until and step % cfg.densify_every == 0:
            out.update(self._densify_and_prune(params, optimizer, generator))
        if cfg.opacity_reset_every > 0 and step % cfg.opacity_reset_every == 0 and step <= cfg.densify_until:
            self._reset_opacity(params, optimizer)
            out["opacity_reset"] = 1
        return out

    # ---- operations ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _densify_and_prune(self, params, optimizer, generator) -> dict[str, int]:
        cfg = self.cfg
        n = params["means"].shape[0]
        avg = self.grad_accum / self.count.clamp_min(1)
        hot = avg >= cfg.grad_threshold
        log_scales = params["log_scales"].detach()
        max_scale = log_scales.exp().amax(-1)
        small = max_scale <= cfg.dense_percent * self.extent
        budget = max(cfg.max_gaussians - n, 0)
        clone = hot & small
        split = hot & ~small
        # Respect the budget: a clone adds 1, a split adds 1 (2 children replace the parent).
        if int(clone.sum() + split.sum()) > budget:
            order = torch.argsort(avg, descending=True)
            allowed = torch.zeros_like(hot)
            allowed[order[:budget]] = True
            clone &= allowed
            split &= allowed
        n_clone, n_split = int(clone.sum()), int(split.sum())

        extra: dict[str, list[Tensor]] = {k: [] for k in params}
        if n_clone:
            for k, v in params.items():
                extra[k].append(v.detach()[clone])
        if n_split:
            idx = split.nonzero().squeeze(1)
            scales = log_scales[idx].exp()
            R = quat_to_rotmat(params["quats"].detach()[idx])
            for _ in range(2):
                z = torch.randn(idx.numel(), 3, generator=generator, dtype=scales.dtype).to(scales.device)
                offset = (R @ (z * scales).unsqueeze(-1)).squeeze(-1)
                for k, v in params.items():
                    child = v.detach()[idx]
                    if k == "means":
                        child = child + offset
                    elif k == "log_scales":
                        child = child - math.log(cfg.split_factor)
                    extra[k].append(child)
        if n_clone or n_split:
            keep = (~split).nonzero().squeeze(1)
            gather_and_append(params, optimizer, keep, {k: torch.cat(v) for k, v in extra.items()})
            n_new = keep.numel() + n_clone + 2 * n_split
            pad = n_new - keep.numel()
            self.max_radii = torch.cat([self.max_radii[keep], self.max_radii.new_zeros(pad)])

        # Prune transparent, and (once opacities have been reset) oversized Gaussians.
        opac = torch.sigmoid(params["opacity_logits"].detach())
        prune = opac < cfg.prune_opacity
        if self.resets_done > 0:
            size = params["log_scales"].detach().exp().amax(-1)
            prune |= size > cfg.prune_size_frac * self.extent
            if cfg.prune_screen_px > 0:
                prune |= self.max_radii > cfg.prune_screen_px
        # Never prune everything: a scene with no Gaussians cannot recover.
        n_prune = int(prune.sum())
        if 0 < n_prune < prune.numel():
            keep = (~prune).nonzero().squeeze(1)
            gather_and_append(params, optimizer, keep)
            self.max_radii = self.max_radii[keep]
        else:
            n_prune = 0
        m = params["means"].shape[0]
        self.grad_accum = self.grad_accum.new_zeros(m)
        self.count = self.count.new_zeros(m)
        self.max_radii = self.max_radii.new_zeros(m)
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune, "count": m}

    @torch.no_grad()
    def _reset_opacity(self, params, optimizer) -> None:
        ceiling = math.log(self.cfg.reset_opacity / (1 - self.cfg.reset_opacity))
        value = params["opacity_logits"].detach().clamp_max(ceiling)
        # Zero the moments: stale momentum would push opacities straight back up.
        _replace_param(params, optimizer, "opacity_logits", value, torch.zeros_like)
        self.resets_done += 1
