"""Densification on hand-made Gaussians: who is cloned, split, pruned, and that Adam's state follows."""

from __future__ import annotations

import math

import torch

from recon.optim.strategy import DensifyConfig, DensifyStrategy, gather_and_append


def _params(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    p = {
        "means": torch.randn(n, 3, generator=g),
        "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        "log_scales": torch.full((n, 3), math.log(0.001)),
        "opacity_logits": torch.zeros(n),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.zeros(n, 3, 3),
    }
    return {k: v.requires_grad_(True) for k, v in p.items()}


def _adam(params):
    opt = torch.optim.Adam([{"params": [v], "lr": 1e-2, "name": k} for k, v in params.items()], eps=1e-15)
    for _ in range(3):  # non-zero moments
        loss = sum((v * torch.arange(v.numel()).reshape(v.shape)).sum() for v in params.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_gather_and_append_keeps_adam_state_consistent():
    params = _params(4)
    opt = _adam(params)
    old_m = {k: opt.state[v]["exp_avg"].clone() for k, v in params.items()}
    keep = torch.tensor([0, 2, 3])
    extra = {k: torch.ones(2, *v.shape[1:]) for k, v in params.items()}
    gather_and_append(params, opt, keep, extra)
    for k, v in params.items():
        assert v.shape[0] == 5 and v.requires_grad and v.is_leaf
        assert opt.param_groups[[g["name"] for g in opt.param_groups].index(k)]["params"][0] is v
        st = opt.state[v]
        assert torch.equal(st["exp_avg"][:3], old_m[k][keep]) and bool((st["exp_avg"][3:] == 0).all())
        assert st["exp_avg_sq"].shape == v.shape and float(st["step"]) == 3
        assert torch.equal(v[3:].detach(), extra[k])
    assert len(opt.state) == len(params)  # no stale entries for the replaced tensors
    # The optimiser still steps with the new tensors.
    loss = sum(v.sum() for v in params.values())
    loss.backward()
    opt.step()


def test_clone_split_prune_and_reset():
    extent = 1.0
    cfg = DensifyConfig(densify_from=1, densify_every=1, densify_until=10, grad_threshold=1e-3,
                        dense_percent=0.01, prune_opacity=0.005, opacity_reset_every=0)
    params = _params(4)
    with torch.no_grad():
        params["log_scales"][1] = math.log(0.05)  # large (> 1% of the extent): split when hot
        params["opacity_logits"][3] = -8.0  # opacity 3e-4: pruned
    opt = _adam(params)
    strat = DensifyStrategy(cfg, extent, 4)
    # Gaussians 0 (small) and 1 (large) have a large screen-space gradient, 2 a tiny one.
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    means2d.grad = torch.tensor([[[0.1, 0.0], [0.0, 0.1], [1e-6, 0.0], [0.0, 0.0]]])
    radii = torch.tensor([[[3, 3], [5, 5], [2, 2], [1, 1]]], dtype=torch.int32)
    strat.accumulate(means2d, radii, width=64, height=48)
    assert torch.allclose(strat.grad_accum, torch.tensor([3.2, 2.4, 3.2e-5, 0.0]))  # x W/2, x H/2
    before = params["means"].detach().clone()
    parent_scale = params["log_scales"].detach()[1].clone()
    out = strat.step(1, params, opt, torch.Generator().manual_seed(0))
    assert out == {"cloned": 1, "split": 1, "pruned": 1, "count": 5}
    # Survivors [0, 2] (3 was pruned), then the clone of 0, then the two children of 1.
    means = params["means"].detach()
    assert torch.equal(means[0], before[0]) and torch.equal(means[1], before[2])
    assert torch.equal(means[2], before[0])
    children = params["log_scales"].detach()[3:]
    assert torch.allclose(children, (parent_scale - math.log(1.6)).expand(2, 3))
    offsets = (means[3:] - before[1]).norm(dim=-1)
    assert bool((offsets > 0).all()) and bool((offsets < 0.05 * 5).all())  # sampled within a few sigma
    assert strat.grad_accum.shape == (5,) and float(strat.grad_accum.abs().sum()) == 0.0
    for v in params.values():
        assert opt.state[v]["exp_avg"].shape == v.shape


def test_opacity_reset_caps_opacity_and_clears_its_moments():
    cfg = DensifyConfig(densify_from=100, opacity_reset_every=5, densify_until=100, reset_opacity=0.01)
    params = _params(3)
    with torch.no_grad():
        params["opacity_logits"].copy_(torch.tensor([3.0, -6.0, 0.0]))
    opt = _adam(params)
    strat = DensifyStrategy(cfg, 1.0, 3)
    assert strat.step(4, params, opt, torch.Generator()) == {}
    low = params["opacity_logits"].detach()[1].clone()
    assert strat.step(5, params, opt, torch.Generator()) == {"opacity_reset": 1}
    logits = params["opacity_logits"].detach()
    assert torch.allclose(torch.sigmoid(logits[[0, 2]]), torch.tensor([0.01, 0.01]), atol=1e-6)
    assert logits[1] == low  # already below the ceiling: untouched
    st = opt.state[params["opacity_logits"]]
    assert float(st["exp_avg"].abs().sum()) == 0 and float(st["exp_avg_sq"].abs().sum()) == 0
    assert strat.resets_done == 1
