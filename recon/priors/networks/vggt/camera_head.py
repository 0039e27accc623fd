"""VGGT camera head (keys ``camera_head.*``): iterative refinement of a 9-d pose encoding per frame.

Input: the camera tokens of the last aggregator output, ``tokens[-1][:, :, 0]`` (B, S, D), D = 2C, passed
through ``token_norm``. Each of ``num_iterations`` rounds:

    m = embed_pose(empty_pose_tokens)            (first round)   or   embed_pose(pred)   (later rounds)
    shift, scale, gate = poseLN_modulation(m)    (SiLU then Linear(D, 3D), split in three)
    x = gate * (adaln_norm(t) * (1 + scale) + shift) + t          (adaLN conditioning on the estimate)
    x = trunk(x)                                                  (transformer blocks across the S frames)
    pred = pred + pose_branch(trunk_norm(x))                      (pred = the delta in the first round)

``pred`` is accumulated *before* activation; each round outputs ``[T, quat, relu(fov)]`` with
``T = pred[..., :3]`` and ``quat = pred[..., 3:7]`` unchanged (see :mod:`.pose_encoding`). LayerNorms are
eps 1e-5 except ``adaln_norm`` (eps 1e-6, no affine parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.priors.networks.layers import Block, Mlp
from recon.priors.networks.vggt.config import VGGTConfig

POSE_ENCODING_DIM = 9
HEAD_NORM_EPS = 1e-5
ADALN_NORM_EPS = 1e-6
LAYERSCALE_INIT = 0.01


def activate_pose(pred: Tensor) -> Tensor:
    """Raw (..., 9) encoding -> output encoding: translation and quaternion linear, FoVs through ReLU."""
    return torch.cat((pred[..., :7], F.relu(pred[..., 7:9])), dim=-1)


class CameraHead(nn.Module):
    """Pose-encoding regressor on the aggregator's camera tokens (see module docstring)."""

    def __init__(self, cfg: VGGTConfig):
        super().__init__()
        self.cfg = cfg
        D = 2 * cfg.embed_dim
        self.token_norm = nn.LayerNorm(D, eps=HEAD_NORM_EPS)
        self.trunk = nn.Sequential(
            *[
                Block(
                    D,
                    cfg.camera_num_heads,
                    mlp_ratio=cfg.camera_mlp_ratio,
                    norm_eps=HEAD_NORM_EPS,
                    layerscale_init=LAYERSCALE_INIT,
                )
                for _ in range(cfg.camera_trunk_depth)
            ]
        )
        self.trunk_norm = nn.LayerNorm(D, eps=HEAD_NORM_EPS)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, D)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 3 * D))
        self.adaln_norm = nn.LayerNorm(D, elementwise_affine=False, eps=ADALN_NORM_EPS)
        self.pose_branch = Mlp(D, D // 2, POSE_ENCODING_DIM)

    def forward(self, aggregated_tokens: list[Tensor], num_iterations: int | None = None) -> list[Tensor]:
        """aggregated_tokens: the aggregator outputs (B, S, N, D). Returns one (B, S, 9) pose encoding
        ``[T, quat xyzw, fov_h, fov_w]`` per iteration; the last one is the estimate."""
        n_iter = self.cfg.camera_num_iterations if num_iterations is None else num_iterations
        tokens = self.token_norm(aggregated_tokens[-1][:, :, 0])  # (B, S, D)
        B, S, _ = tokens.shape
        normed = self.adaln_norm(tokens)
        pred: Tensor | None = None
        out = []
        for _ in range(n_iter):
            cond = self.empty_pose_tokens.expand(B, S, -1) if pred is None else pred.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(cond)).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            pred = delta if pred is None else pred + delta
            out.append(activate_pose(pred))
        return out
