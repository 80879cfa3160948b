"""Tests for distill.medication.losses: BCE, feature MSE, InfoNCE and their weighted sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from distill.medication.losses import bce, distill_loss, feature_mse, info_nce


def _batch(seed: int = 0, b: int = 6, labels: int = 5, dim: int = 8, tdim: int = 12):
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(b, labels, generator=g),
        "y": (torch.rand(b, labels, generator=g) < 0.4).float(),
        "projected": torch.randn(b, tdim, generator=g),
        "teacher": torch.randn(b, tdim, generator=g),
        "profile_vec": torch.randn(b, dim, generator=g),
        "med_vec": torch.randn(b, dim, generator=g),
    }


def test_bce_equals_torch():
    d = _batch()
    expected = F.binary_cross_entropy_with_logits(d["logits"], d["y"])
    torch.testing.assert_close(bce(d["logits"], d["y"]), expected)
    # and the textbook formula, to be sure it is the mean over every entry
    p = torch.sigmoid(d["logits"])
    manual = -(d["y"] * p.log() + (1 - d["y"]) * (1 - p).log()).mean()
    torch.testing.assert_close(bce(d["logits"], d["y"]), manual, atol=1e-5, rtol=1e-5)


def test_feature_mse_value_and_shape_mismatch():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 6.0]])
    assert feature_mse(a, b).item() == pytest.approx((0 + 4 + 0 + 4) / 4)
    with pytest.raises(ValueError) as e:
        feature_mse(torch.zeros(4, 8), torch.zeros(4, 16))
    assert "(4, 8)" in str(e.value) and "(4, 16)" in str(e.value)


def test_info_nce_aligned_pairs_near_zero_and_shuffled_larger():
    eye = torch.eye(6)
    aligned = info_nce(eye, eye.clone(), temperature=0.01)
    assert aligned.item() == pytest.approx(0.0, abs=1e-6)
    shuffled = info_nce(eye, eye[torch.tensor([1, 2, 3, 4, 5, 0])], temperature=0.01)
    assert shuffled.item() > aligned.item() + 10  # every row matches a wrong partner
    # scaling a row changes nothing: both sides are L2-normalised first
    torch.testing.assert_close(info_nce(3 * eye, eye, temperature=0.01), aligned)


def test_info_nce_is_symmetric_cross_entropy():
    d = _batch(seed=1)
    a, b = d["profile_vec"], d["med_vec"]
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / 0.5
    target = torch.arange(len(a))
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    torch.testing.assert_close(info_nce(a, b, temperature=0.5), expected)


def test_info_nce_batch_of_one_is_exactly_zero():
    a, b = torch.randn(1, 8), torch.randn(1, 8)
    loss = info_nce(a, b)
    assert loss.item() == 0.0 and loss.shape == ()


@pytest.mark.parametrize(
    ("alpha", "beta", "keys"),
    [(0.0, 0.0, {"bce"}), (1.0, 0.0, {"bce", "kd"}), (0.0, 0.3, {"bce", "nce"}),
     (0.5, 0.3, {"bce", "kd", "nce"})],
)  # fmt: skip
def test_distill_loss_skips_zero_weight_terms(alpha, beta, keys):
    d = _batch()
    total, parts = distill_loss(**d, alpha=alpha, beta=beta, temperature=0.2)
    assert set(parts) == keys
    assert all(isinstance(v, float) for v in parts.values())
    expected = parts["bce"] + alpha * parts.get("kd", 0.0) + beta * parts.get("nce", 0.0)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["bce"] == pytest.approx(bce(d["logits"], d["y"]).item())
    if "kd" in parts:
        assert parts["kd"] == pytest.approx(feature_mse(d["projected"], d["teacher"]).item())
    if "nce" in parts:
        nce = info_nce(d["profile_vec"], d["med_vec"], 0.2).item()
        assert parts["nce"] == pytest.approx(nce)


def test_distill_loss_zero_weights_need_no_side_inputs():
    d = _batch()
    total, parts = distill_loss(d["logits"], d["y"], None, None, None, None, 0.0, 0.0)
    assert parts == {"bce": pytest.approx(bce(d["logits"], d["y"]).item())}
    torch.testing.assert_close(total, bce(d["logits"], d["y"]))


def test_distill_loss_requires_the_inputs_of_weighted_terms():
    d = _batch()
    with pytest.raises(ValueError, match="teacher features"):
        distill_loss(d["logits"], d["y"], d["projected"], None, None, None, 1.0, 0.0)
    with pytest.raises(ValueError, match="teacher features"):
        distill_loss(d["logits"], d["y"], None, d["teacher"], None, None, 0.1, 0.0)
    with pytest.raises(ValueError, match="profile"):
        distill_loss(d["logits"], d["y"], None, None, d["profile_vec"], None, 0.0, 0.1)


def test_distill_loss_gradient_reaches_every_weighted_input():
    d = {k: v.clone().requires_grad_(k != "y") for k, v in _batch().items()}
    total, _ = distill_loss(**d, alpha=1.0, beta=0.1)
    total.backward()
    for k in ("logits", "projected", "profile_vec", "med_vec"):
        assert d[k].grad is not None and d[k].grad.abs().sum() > 0, k
