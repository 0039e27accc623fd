"""Losses and schedules against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from recon.metrics import ssim
from recon.optim.losses import dssim_loss, l1_loss, pearson_depth_loss, photometric_loss
from recon.optim.schedules import exp_decay, sh_degree_at


def test_l1_and_photometric_mixture():
    ref = torch.full((16, 16, 3), 0.5)
    img = ref.clone()
    img[:8] += 0.2  # half the pixels off by 0.2
    assert float(l1_loss(img, ref)) == pytest.approx(0.1, abs=1e-6)
    d = float(dssim_loss(img, ref))
    assert d == pytest.approx(1 - float(ssim(img, ref, padding="reflect")), abs=1e-6) and d > 0
    assert float(photometric_loss(img, ref, 0.2)) == pytest.approx(0.8 * 0.1 + 0.2 * d, abs=1e-6)
    assert float(photometric_loss(img, ref, 0.0)) == pytest.approx(0.1, abs=1e-6)
    assert float(photometric_loss(ref, ref)) == pytest.approx(0.0, abs=1e-6)


def test_pearson_depth_loss_is_affine_invariant():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 12, 10, generator=g) + 1.0
    assert float(pearson_depth_loss(d, 3.0 * d + 2.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(pearson_depth_loss(d, -d)) == pytest.approx(2.0, abs=1e-5)
    noise = torch.rand(2, 12, 10, generator=g)
    v = float(pearson_depth_loss(d, noise))
    assert 0.5 < v < 1.5  # nearly uncorrelated
    # The mask restricts the correlation: wrong values outside it do not count.
    prior = 2 * d
    prior[:, :, 5:] = noise[:, :, 5:]
    mask = torch.zeros_like(d, dtype=torch.bool)
    mask[:, :, :5] = True
    assert float(pearson_depth_loss(d, prior, mask)) == pytest.approx(0.0, abs=1e-5)
    # Gradients flow to the rendered depth.
    dr = d.clone().requires_grad_(True)
    pearson_depth_loss(dr, noise).backward()
    assert dr.grad is not None and float(dr.grad.abs().sum()) > 0


def test_exp_decay_and_sh_schedule():
    assert exp_decay(0, 100, 1e-2, 1e-4) == pytest.approx(1e-2)
    assert exp_decay(100, 100, 1e-2, 1e-4) == pytest.approx(1e-4)
    assert exp_decay(50, 100, 1e-2, 1e-4) == pytest.approx(1e-3)  # log-linear: geometric mean halfway
    assert exp_decay(500, 100, 1e-2, 1e-4) == pytest.approx(1e-4)
    assert exp_decay(4, 100, 1e-2, 1e-2, warmup=10) == pytest.approx(1e-2 * 5 / 10)
    assert exp_decay(0, 100, 0.0, 1e-4) == 0.0
    assert [sh_degree_at(s, 3, 100) for s in (0, 99, 100, 250, 10_000)] == [0, 0, 1, 2, 3]
    assert sh_degree_at(0, 2, 0) == 2
    assert math.isfinite(exp_decay(10, 0, 1e-3, 1e-5))
