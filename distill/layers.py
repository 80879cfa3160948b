"""Torch layers both domains' models share (the medication student, the news teacher and the
news student).

Attention is written by hand with an additive ``MASK_VALUE`` key mask: plain MatMul/Softmax ops
that export to ONNX with symbolic axes, no fused fast path, and pads never reach a real
position, so extra padding changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "MASK_VALUE",
    "AdditivePool",
    "Projector",
    "SelfAttention",
    "count_parameters",
    "key_bias",
]

MASK_VALUE = -1e4


def key_bias(mask: Tensor) -> Tensor:
    """Float keep-mask [B, T] (1 keep, 0 pad) -> additive attention bias [B, 1, 1, T]."""
    return ((1.0 - mask) * MASK_VALUE)[:, None, None, :]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, T, D]; bias [B, 1, 1, T] additive (0 keep, -1e4 masked)."""
        b, t, d = x.shape
        hd = d // self.heads

        def split(z: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, hd]
            return z.reshape(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)) + bias
        weights = self.drop(torch.softmax(scores, dim=-1))
        y = torch.matmul(weights, v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class AdditivePool(nn.Module):
    """Additive attention pooling: weights softmax(q . tanh(W x + b)) over the kept positions."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, attention_dim)
        self.query = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], mask [B, T] float (1 keep) -> [B, D]."""
        scores = self.query(torch.tanh(self.proj(x))).squeeze(-1) + (1.0 - mask) * MASK_VALUE
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights.unsqueeze(1), x).squeeze(1)


class Projector(nn.Module):
    """Student features [.., dim] -> the teacher's hidden size (Linear, or a 2-layer MLP)."""

    def __init__(self, dim: int, teacher_dim: int, mlp: bool = False) -> None:
        super().__init__()
        if mlp:
            self.net = nn.Sequential(
                nn.Linear(dim, teacher_dim), nn.GELU(), nn.Linear(teacher_dim, teacher_dim)
            )
        else:
            self.net = nn.Linear(dim, teacher_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
