"""The teacher on the device (export.teacher): a frozen teacher (backbone + linear head) exported
to ONNX and int8 with optimum, then run by `OnnxTeacher` (tokenizer, session, pooling, head) --
the fair baseline `bench/latency.py` times beside the student. On TINY backbones built from
configs (a 2-layer Llama decoder, last-token pooling; a 2-layer BERT, mean pooling): no
download, and the real SmolLM2 takes the same code path (`frozen_teacher("smollm2", ...)`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("optimum.onnxruntime")

from export.teacher import OnnxTeacher, export_teacher_model, frozen_teacher  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TEXTS = ["w1 w2 k3 visit", "k1 k2", "visit w3 w4 w5 w6 k0 k1 w2 w2 k4"]


def torch_logits(teacher, texts, max_length):
    enc = teacher.tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        return teacher(enc["input_ids"], enc["attention_mask"])["logits"].numpy()


@pytest.mark.parametrize(("which", "pooling"), [("llama_dir", "last"), ("bert_dir", "mean")])
def test_frozen_teacher_exports_and_matches_torch(tmp_path, request, which, pooling):
    teacher = frozen_teacher(request.getfixturevalue(which), n_labels=7, max_length=32)
    assert teacher.pooling == pooling
    info = export_teacher_model(teacher, tmp_path / "onnx", preset="avx512_vnni")
    assert info["pooling"] == pooling and info["n_labels"] == 7
    assert info["quantization"]["tool"] == "optimum ORTQuantizer"
    assert json.loads((tmp_path / "onnx" / "teacher_onnx.json").read_text()) == info
    for kind in ("fp32", "int8"):
        assert (tmp_path / "onnx" / info["files"][kind]).is_file()
        assert info["bytes"][kind] > 0
    want = torch_logits(teacher, TEXTS, 32)
    got32 = OnnxTeacher(tmp_path / "onnx", "fp32").logits(TEXTS)
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-5)
    got8 = OnnxTeacher(tmp_path / "onnx", "int8").logits(TEXTS)
    assert got8.shape == want.shape
    assert np.abs(got8 - want).max() < 0.1 * max(np.abs(want).max(), 1e-3)


def test_prompt_budget_keeps_the_end_of_a_long_prompt(tmp_path, llama_dir):
    """`max_length` cuts from the left, as the teachers read LEADER prompts (the current visit
    and the closing phrase are at the end)."""
    teacher = frozen_teacher(llama_dir, n_labels=3, max_length=64)
    export_teacher_model(teacher, tmp_path / "onnx")
    long = " ".join(["w1 k2"] * 40) + " visit"
    short = OnnxTeacher(tmp_path / "onnx", "fp32", max_length=8)
    teacher.tokenizer.truncation_side = "left"
    np.testing.assert_allclose(
        short.logits([long]), torch_logits(teacher, [long], 8), rtol=0, atol=1e-5
    )
