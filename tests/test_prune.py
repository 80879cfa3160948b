"""Tests for export.medication.prune: the shipped student cut to the codes it trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.layout import INPUT_NAMES, PAD_ID
from distill.medication.student import LeaderStudent, StudentConfig
from export.medication.prune import Pruning, prune_student, prune_vocab, remap_arrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = StudentConfig(n_diagnoses=20, n_procedures=9, n_medications=7, n_profile=5, n_labels=5,
                    dim=16, heads=2, visit_layers=1, teacher_dim=8, max_visits=4,
                    wide_codes="mean", wide_codes_scale=3.0)  # fmt: skip
KEEP = {"diagnoses": [2, 3, 5, 8, 13], "procedures": [4, 6]}


def _arrays(seed: int = 0, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = CFG.max_visits
    mask = np.ones((n, v), np.float32)
    mask[: n // 2, :2] = 0.0
    keep = mask[..., None].astype(np.int64)
    med = rng.integers(0, CFG.n_medications, (n, v, 3)) * keep
    med[:, -1] = 0
    return {
        "dx": rng.integers(0, CFG.n_diagnoses, (n, v, 5)) * keep,
        "px": rng.integers(0, CFG.n_procedures, (n, v, 3)) * keep,
        "med": med,
        "visit_mask": mask,
        "profile": rng.integers(0, CFG.n_profile, (n, 2)),
    }


def _logits(model, arrays) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(np.asarray(arrays[k])) for k in INPUT_NAMES))[0].numpy()


def test_pruned_student_on_remapped_ids_equals_the_student_without_the_dropped_codes():
    """Dropping rows changes nothing but the dropped codes, which are left out (pads)."""
    torch.manual_seed(0)
    model = LeaderStudent(CFG).eval()
    with torch.no_grad():
        model.wide.weight.normal_()
    pruned, cfg, pruning = prune_student(model, CFG, KEEP)
    assert (cfg.n_diagnoses, cfg.n_procedures) == (2 + 5, 2 + 2)
    assert cfg.n_medications == CFG.n_medications and cfg.n_profile == CFG.n_profile
    assert cfg.wide_codes == "mean" and cfg.wide_codes_scale == 3.0
    arrays = _arrays()
    unk = dict(arrays)
    for name, kind in (("dx", "diagnoses"), ("px", "procedures")):
        a = arrays[name].copy()
        dropped = (a > 1) & ~np.isin(a, KEEP[kind])
        assert dropped.any()  # the test exercises dropped codes
        a[dropped] = PAD_ID
        unk[name] = a
    np.testing.assert_allclose(_logits(pruned, remap_arrays(arrays, pruning)),
                               _logits(model, unk), rtol=1e-5, atol=1e-5)  # fmt: skip
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())


def test_vocab_is_cut_and_renumbered():
    pruning = Pruning({"diagnoses": 6}, {"diagnoses": [4, 2]})
    tokens = {"<pad>": 0, "<unk>": 1, "icd9cm:401": 2, "icd9cm:250": 3, "icd9cm:428": 4,
              "icd9cm:486": 5}  # fmt: skip
    assert prune_vocab(tokens, pruning, "diagnoses") == {
        "<pad>": 0, "<unk>": 1, "icd9cm:401": 2, "icd9cm:428": 3,
    }  # fmt: skip
    assert pruning.maps["diagnoses"].tolist() == [0, 1, 2, 0, 3, 0]
    assert pruning.summary() == {"diagnoses": {"kept": 4, "of": 6}}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Pruning({"diagnoses": 3}, {"diagnoses": [5]})
