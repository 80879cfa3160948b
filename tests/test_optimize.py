"""Tests for export.optimize: each pass keeps the student's outputs and removes nodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from contract.layout import INPUT_NAMES  # noqa: E402
from distill.medication.student import LeaderStudent, StudentConfig  # noqa: E402
from export import optimize as opt  # noqa: E402
from export.medication.graph import example_inputs, export_student  # noqa: E402
from export.medication.parity import run_onnx  # noqa: E402

CFG = StudentConfig(
    n_diagnoses=60,
    n_procedures=30,
    n_medications=20,
    n_profile=8,
    n_labels=18,
    dim=32,
    heads=4,
    visit_layers=2,
    teacher_dim=16,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("opt") / "student.onnx"
    export_student(LeaderStudent(CFG).eval(), CFG, path)
    torch.set_num_threads(before)
    return path


def feeds(batch, visits, seed):
    args = example_inputs(CFG, batch, visits, seed=seed, codes=(5, 3, 6, 4))
    return {n: a.numpy() for n, a in zip(INPUT_NAMES, args, strict=True)}


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize(
    "name",
    ["fuse_gelu", "simplify_reshapes", "nonzero_as_cast", "merge_sibling_matmuls", "simplify"],
)
def test_each_pass_keeps_the_outputs_and_removes_nodes(fp32, tmp_path, name):
    model = onnx.load(str(fp32))
    before = len(model.graph.node)
    changed = getattr(opt, name)(model)
    assert (sum(changed.values()) if isinstance(changed, dict) else changed) > 0
    assert len(model.graph.node) < before
    out = tmp_path / f"{name}.onnx"
    onnx.save(model, str(out))
    for b, v in ((1, 1), (2, 3), (5, 7)):  # sizes other than the traced ones
        x = feeds(b, v, seed=b * 10 + v)
        want, got = run_onnx(fp32, x), run_onnx(out, x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_gelu_becomes_one_node_and_erf_is_gone(fp32):
    model = onnx.load(str(fp32))
    n_erf = ops(model).count("Erf")
    assert n_erf >= 1
    assert opt.fuse_gelu(model) == n_erf
    assert "Erf" not in ops(model) and ops(model).count("Gelu") == n_erf
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in model.opset_import]


def test_ort_optimize_writes_a_loadable_graph_with_only_used_opsets(fp32, tmp_path):
    out = tmp_path / "opt.onnx"
    info = opt.optimize_file(fp32, out)
    assert info["nodes_after"] < info["nodes_before"]
    model = onnx.load(str(out))
    assert {o.domain for o in model.opset_import} <= {"", "com.microsoft"}
    x = feeds(3, 4, seed=1)
    want, got = run_onnx(fp32, x), run_onnx(out, x)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_quantize_gathers_is_close_and_8_bit(fp32, tmp_path):
    model = onnx.load(str(fp32))
    assert opt.quantize_gathers(model) >= 1
    assert "GatherBlockQuantized" in ops(model)
    out = tmp_path / "gbq.onnx"
    onnx.save(model, str(out))
    x = feeds(2, 3, seed=2)
    want, got = run_onnx(fp32, x), run_onnx(out, x)
    assert np.abs(got["logits"] - want["logits"]).max() < 0.1
