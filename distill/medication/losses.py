"""Losses of LEADER-style distillation, kept apart from the models that produce their inputs.

total = BCE(logits, y) + alpha * MSE(projector(student features), teacher features)
        + beta * InfoNCE(profile token, current medication set)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, y)


def feature_mse(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error per feature dimension (teacher features standardised upstream)."""
    if projected.shape != teacher.shape:
        raise ValueError(
            f"projected student features {tuple(projected.shape)} do not match "
            f"teacher features {tuple(teacher.shape)}"
        )
    return F.mse_loss(projected, teacher)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` should match row i of `b` against the other rows.

    With a batch of one there are no negatives, and the loss is 0.
    """
    if a.shape[0] < 2:
        return a.new_zeros(())
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def distill_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    projected: torch.Tensor | None,
    teacher: torch.Tensor | None,
    profile_vec: torch.Tensor | None,
    med_vec: torch.Tensor | None,
    alpha: float,
    beta: float,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum, and its parts as floats for logging. Terms with weight 0 are skipped."""
    parts = {"bce": bce(logits, y)}
    if alpha > 0:
        if projected is None or teacher is None:
            raise ValueError("alpha > 0 needs teacher features and projected student features")
        parts["kd"] = feature_mse(projected, teacher)
    if beta > 0:
        if profile_vec is None or med_vec is None:
            raise ValueError("beta > 0 needs the profile and medication-set embeddings")
        parts["nce"] = info_nce(profile_vec, med_vec, temperature)
    total = parts["bce"] + alpha * parts.get("kd", 0.0) + beta * parts.get("nce", 0.0)
    return total, {k: float(v.detach()) for k, v in parts.items()}
