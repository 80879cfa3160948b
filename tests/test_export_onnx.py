"""Tests for export.onnx and export.medication.graph: the student as one ONNX file with symbolic
batch/visit/code axes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from contract.layout import INPUT_NAMES, OUTPUT_NAMES  # noqa: E402
from distill.medication.student import LeaderStudent, StudentConfig  # noqa: E402
from export import onnx as export_onnx  # noqa: E402
from export.medication.graph import check_graph, example_inputs, export_student  # noqa: E402
from export.medication.parity import check_torch_vs_onnx, run_onnx  # noqa: E402
from export.onnx import OPSET, ExportError  # noqa: E402

TINY = StudentConfig(
    n_diagnoses=30,
    n_procedures=12,
    n_medications=20,
    n_profile=9,
    n_labels=18,
    dim=16,
    heads=2,
    visit_layers=1,
    teacher_dim=24,
)


# tiny models: one intra-op thread is fastest on the shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model in eval mode, path, info) -- exported once for the module, from train mode."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(3)
    model = LeaderStudent(TINY)
    with torch.no_grad():  # non-zero repeat weights, so that head is exercised too
        model.repeat_last.uniform_(-1.0, 1.0)
        model.repeat_mean.uniform_(-1.0, 1.0)
    model.train()
    folder = tmp_path_factory.mktemp("onnx")
    info = export_student(model, TINY, folder / "student.onnx")
    trained_flag_kept = model.training
    torch.set_num_threads(before)
    return model.eval(), folder / "student.onnx", info, trained_flag_kept


def test_export_writes_one_checked_file_and_describes_it(exported):
    _, path, info, trained_flag_kept = exported
    assert trained_flag_kept, "export_student must restore the model's training flag"
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.onnx"]  # no temp files
    assert info["opset"] == OPSET
    assert info["bytes"] == path.stat().st_size
    assert info["file"] == "student.onnx"  # a name, not a machine's absolute path
    assert [i["name"] for i in info["inputs"]] == list(INPUT_NAMES)
    assert [o["name"] for o in info["outputs"]] == list(OUTPUT_NAMES)
    assert {i["name"]: i["dtype"] for i in info["inputs"]} == {
        "dx": "int64",
        "px": "int64",
        "med": "int64",
        "visit_mask": "float32",
        "profile": "int64",
    }
    assert info["outputs"][0]["shape"] == ["batch", TINY.n_labels]
    assert info["outputs"][1]["shape"] == ["batch", TINY.dim]
    assert {"Gather", "MatMul"} <= set(info["ops"])

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    meta = {p.key: p.value for p in model.metadata_props}
    assert StudentConfig.from_dict(json.loads(meta["pocketrec.student_config"])) == TINY
    # debug info (stack traces with build-machine paths) is stripped
    assert not any(n.metadata_props for n in model.graph.node)
    assert b"stack_trace" not in path.read_bytes()
    assert info["debug_bytes_stripped"] > 0
    json.dumps(info)  # JSON-able, for the bundle manifest


def test_batch_visit_and_code_axes_are_symbolic(exported):
    _, path, _, _ = exported
    graph = onnx.load(str(path)).graph
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        assert all(d.dim_param and not d.HasField("dim_value") for d in dims), vi
        assert dims[0].dim_param == "batch"
        if vi.name != "profile":
            assert dims[1].dim_param == "visits"
    for vi in graph.output:
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    ("batch", "visits", "codes"),
    [
        (1, 1, (1, 1, 1, 1)),  # a single first visit: every axis at 1
        (2, 7, (9, 2, 5, 3)),
        (5, 2, (3, 6, 2, 8)),
        (4, 12, (40, 20, 40, 8)),  # more visits than max_visits: distance clamps
    ],
)
def test_onnxruntime_matches_torch_on_other_sizes(exported, batch, visits, codes):
    model, path, _, _ = exported
    args = example_inputs(TINY, batch, visits, seed=batch * 100 + visits, codes=codes)
    report = check_torch_vs_onnx(model, path, args, atol=1e-4)
    assert report["passed"]
    assert report["output_shapes"] == {"logits": [batch, TINY.n_labels], "features": [batch, 16]}
    # and directly, without the helper
    got = run_onnx(path, dict(zip(INPUT_NAMES, (a.numpy() for a in args), strict=True)))
    with torch.no_grad():
        want = model(*args)
    for name, w in zip(OUTPUT_NAMES, want, strict=True):
        np.testing.assert_allclose(got[name], w.numpy(), rtol=0, atol=1e-4)


class BatchOfThree(torch.nn.Module):
    """Broadcasts against a constant of batch size 3: the tracer freezes the batch axis."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, dx, px, med, visit_mask, profile):
        logits, features = self.inner(dx, px, med, visit_mask, profile)
        return logits + torch.zeros(3, 1), features


def test_a_frozen_batch_axis_is_rejected(tmp_path):
    torch.manual_seed(0)
    wrapper = BatchOfThree(LeaderStudent(TINY))
    target = tmp_path / "frozen.onnx"
    with pytest.raises(ExportError, match=r"batch") as err:
        export_student(wrapper, TINY, target, example_batch=3)
    assert "fixed at 3" in str(err.value)
    assert "'dx' axis 0 (batch)" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def _with_dim(path, input_name: str, axis: int, value: int):
    model = onnx.load(str(path))
    vi = next(i for i in model.graph.input if i.name == input_name)
    vi.type.tensor_type.shape.dim[axis].dim_value = value  # clears dim_param (oneof)
    return model


def test_check_graph_names_a_frozen_visit_axis(exported):
    _, path, _, _ = exported
    check_graph(path)  # the real export passes
    with pytest.raises(ExportError, match=r"'visit_mask' axis 1 \(visits\) is fixed at 4"):
        check_graph(_with_dim(path, "visit_mask", 1, 4))
    with pytest.raises(ExportError, match=r"'med' axis 2 \(n_med\) is fixed at 6"):
        check_graph(_with_dim(path, "med", 2, 6))


def test_check_graph_rejects_wrong_names(exported):
    _, path, _, _ = exported
    model = onnx.load(str(path))
    model.graph.input[0].name = "diagnoses"
    with pytest.raises(ExportError, match="graph inputs are"):
        check_graph(model)
    model = onnx.load(str(path))
    model.graph.output[1].name = "embedding"
    with pytest.raises(ExportError, match="graph outputs are"):
        check_graph(model)


def test_example_sizes_below_two_are_refused(tmp_path):
    with pytest.raises(ValueError, match=">= 2"):
        export_student(LeaderStudent(TINY), TINY, tmp_path / "x.onnx", example_batch=1)
    with pytest.raises(ValueError, match=">= 2"):
        export_student(LeaderStudent(TINY), TINY, tmp_path / "x.onnx", example_visits=1)
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_exporter_could_not_reach_is_an_error(exported, tmp_path, monkeypatch):
    """Below its native opset the exporter down-converts best-effort and, on failure, keeps
    the original opset; export_student must notice (simulated: the trace writes opset 18)."""
    _, path, _, _ = exported

    def fake_trace(model, args, out, opset, *names_and_shapes):
        shutil.copyfile(path, out)

    monkeypatch.setattr(export_onnx, "_trace", fake_trace)
    with pytest.raises(ExportError, match=f"asked for opset 16, the exporter wrote opset {OPSET}"):
        export_student(LeaderStudent(TINY), TINY, tmp_path / "s.onnx", opset=16)
    assert list(tmp_path.iterdir()) == []


def test_exporter_failures_become_export_errors(tmp_path, monkeypatch):
    def broken_trace(model, args, out, opset, *names_and_shapes):
        raise RuntimeError("boom")

    monkeypatch.setattr(export_onnx, "_trace", broken_trace)
    with pytest.raises(ExportError, match="torch.onnx.export failed: RuntimeError: boom"):
        export_student(LeaderStudent(TINY), TINY, tmp_path / "s.onnx")
    assert list(tmp_path.iterdir()) == []
