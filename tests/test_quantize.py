"""Tests for export.quantize: presets, the Gemm rewrite, and int8 files that really are int8."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from contract.layout import INPUT_NAMES  # noqa: E402
from distill.medication.student import LeaderStudent, StudentConfig  # noqa: E402
from export.medication.graph import example_inputs, export_student  # noqa: E402
from export.medication.parity import run_onnx  # noqa: E402
from export.onnx import OPSET  # noqa: E402
from export.parity import check_integer_ops  # noqa: E402
from export.quantize import (  # noqa: E402
    PRESETS,
    QuantizationPreset,
    gemm_to_matmul,
    get_preset,
    quantize,
    sidecar_path,
)

# big enough that weights dominate the file, small enough to export in seconds
CFG = StudentConfig(
    n_diagnoses=300,
    n_procedures=80,
    n_medications=40,
    n_profile=12,
    n_labels=38,
    dim=32,
    heads=4,
    visit_layers=1,
    teacher_dim=48,
)


# tiny models: one intra-op thread is fastest on the shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(11)
    model = LeaderStudent(CFG).eval()
    path = tmp_path_factory.mktemp("fp32") / "student.onnx"
    export_student(model, CFG, path)
    torch.set_num_threads(before)
    return path


def feeds(batch=4, visits=5, seed=0, codes=(7, 3, 6, 4)):
    args = example_inputs(CFG, batch, visits, seed=seed, codes=codes)
    return {n: a.numpy() for n, a in zip(INPUT_NAMES, args, strict=True)}


def test_presets_are_the_three_targets_with_optimum_like_settings():
    assert list(PRESETS) == ["avx2", "avx512_vnni", "arm64"]
    for name, p in PRESETS.items():
        assert p.name == name and p.mode == "dynamic"
        assert p.per_channel and not p.reduce_range and p.weight_symmetric
        assert {"MatMul", "Gemm", "Gather"} <= set(p.op_types)
    assert PRESETS["avx2"].weight_type == "uint8"
    assert PRESETS["avx512_vnni"].weight_type == "int8"
    assert PRESETS["arm64"].weight_type == "int8"


def test_presets_match_optimum_auto_quantization_config():
    """Same weight type / per-channel / reduce-range / symmetry as optimum's dynamic configs."""
    optimum_ort = pytest.importorskip("optimum.onnxruntime")
    from onnxruntime.quantization import QuantType

    for name, p in PRESETS.items():
        ref = getattr(optimum_ort.AutoQuantizationConfig, name)(is_static=False)
        assert not ref.is_static
        assert ref.per_channel == p.per_channel
        assert ref.reduce_range == p.reduce_range
        assert ref.weights_symmetric == p.weight_symmetric
        assert ref.activations_dtype == QuantType.QUInt8  # dynamic: activations are uint8
        want = QuantType.QInt8 if p.weight_type == "int8" else QuantType.QUInt8
        assert ref.weights_dtype == want, name
        # optimum's default op list (MatMul, Gather, ...) covers ours, Gemm aside (we rewrite it)
        assert set(p.op_types) - {"Gemm"} <= set(ref.operators_to_quantize)


def test_preset_validation_and_round_trip():
    p = PRESETS["arm64"]
    assert QuantizationPreset.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.per_channel = False  # type: ignore[misc]
    ok = dict(name="x", target="t", per_channel=True, reduce_range=False, weight_type="int8")
    assert QuantizationPreset(**ok, op_types=["MatMul"]).op_types == ("MatMul",)
    with pytest.raises(ValueError, match="weight_type"):
        QuantizationPreset(**(ok | {"weight_type": "int4"}), op_types=("MatMul",))
    with pytest.raises(ValueError, match="must include MatMul"):
        QuantizationPreset(**ok, op_types=("Gather",))
    with pytest.raises(ValueError, match="unsupported op_types"):
        QuantizationPreset(**ok, op_types=("MatMul", "Conv"))
    with pytest.raises(ValueError, match="mode"):
        QuantizationPreset(**ok, op_types=("MatMul",), mode="static")
    with pytest.raises(ValueError, match="unknown QuantizationPreset fields"):
        QuantizationPreset.from_dict(p.to_dict() | {"bits": 4})
    with pytest.raises(ValueError, match="choose one of avx2, avx512_vnni, arm64"):
        get_preset("avx3")
    assert get_preset("avx2") is PRESETS["avx2"]


def test_gemm_to_matmul_keeps_outputs(fp32, tmp_path):
    model = onnx.load(str(fp32))
    n_gemm = sum(n.op_type == "Gemm" for n in model.graph.node)
    assert n_gemm > 0  # the exporter writes 2-D Linear layers as Gemm
    assert gemm_to_matmul(model) == n_gemm
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    out = tmp_path / "matmul.onnx"
    onnx.save(model, str(out))
    x = feeds()
    want, got = run_onnx(fp32, x), run_onnx(out, x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_writes_a_smaller_int8_model_and_its_json(fp32, tmp_path, name):
    preset = PRESETS[name]
    out = tmp_path / f"student.{name}.int8.onnx"
    record = quantize(fp32, out, name)
    assert record["name"] == name and record["preset"] == preset.to_dict()

    # files: the model and the JSON beside it, nothing else (no temp files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, out.name + ".quantization.json"]
    )
    side = json.loads(sidecar_path(out).read_text())
    assert QuantizationPreset.from_dict(side["preset"]) == preset
    assert side["quantizer"] == "onnxruntime.quantization.quantize_dynamic"
    assert side["output"]["bytes"] == out.stat().st_size == record["output"]["bytes"]
    assert side["source"]["bytes"] == fp32.stat().st_size

    # smaller: weights are 8-bit (the embedding table too)
    assert out.stat().st_size < 0.5 * fp32.stat().st_size, record["size_ratio"]

    # really integer: fused integer products (quantise + MatMulInteger + scale + bias in one
    # node, as ORT's offline optimisation writes them) on 8-bit weights, no float Linear left
    ops = check_integer_ops(out)
    products = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")
    assert sum(ops["integer_ops"].get(op, 0) for op in products) >= 1
    assert "MatMulInteger" not in ops["integer_ops"]  # all fused
    assert ops["integer_ops"]["DequantizeLinear"] >= 1  # the quantized Gathers
    assert ops["float_weight_matmuls"] == 0
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    weight_types = {
        inits[n.input[1]].data_type
        for n in model.graph.node
        if n.op_type in products and n.input[1] in inits
    }
    want = onnx.TensorProto.INT8 if preset.weight_type == "int8" else onnx.TensorProto.UINT8
    assert weight_types == {want}
    opt = record["optimization"]
    assert opt["enabled"] and opt["passes"]["gelu_fused"] >= 1
    assert opt["nodes"]["shipped"] < opt["nodes"]["quantized"]
    assert opt["nodes"]["shipped"] < opt["nodes"]["fp32"]

    # same interface as the fp32 graph: opset, names, symbolic axes; the preset in metadata
    src = onnx.load(str(fp32))
    assert [(o.domain, o.version) for o in model.opset_import] == [
        ("", OPSET),
        ("com.microsoft", 1),
    ]
    assert [i.name for i in model.graph.input] == [i.name for i in src.graph.input]
    assert [str(i.type) for i in model.graph.input] == [str(i.type) for i in src.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in src.graph.output]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["pocketrec.quantization"]) == preset.to_dict()
    assert "pocketrec.student_config" in meta

    # and it runs, on sizes other than the traced ones, close to fp32
    for b, v in ((1, 1), (6, 9)):
        x = feeds(b, v, seed=b + v)
        want32, got8 = run_onnx(fp32, x), run_onnx(out, x)
        assert got8["logits"].shape == (b, CFG.n_labels)
        assert np.abs(got8["logits"] - want32["logits"]).max() < 0.5


def test_plain_quantization_without_optimize_is_standard_onnx(fp32, tmp_path):
    out = tmp_path / "plain.onnx"
    record = quantize(fp32, out, "avx2", optimize=False)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert record["optimization"]["enabled"] is False
    assert check_integer_ops(out)["integer_ops"]["MatMulInteger"] >= 1
    x = feeds(3, 4, seed=5)
    fused = tmp_path / "fused.onnx"
    quantize(fp32, fused, "avx2")
    # the optimised graph computes the same int8 function (same weights, same quantisation)
    a, b = run_onnx(out, x), run_onnx(fused, x)
    assert np.abs(a["logits"] - b["logits"]).max() < 0.05


def test_without_gather_the_table_stays_float_and_the_file_is_bigger(fp32, tmp_path):
    full = quantize(fp32, tmp_path / "full.onnx", "arm64")
    no_gather = dataclasses.replace(PRESETS["arm64"], name="arm64_mm", op_types=("MatMul", "Gemm"))
    part = quantize(fp32, tmp_path / "part.onnx", no_gather)
    assert "DequantizeLinear" not in part["output"]["ops"]
    assert part["output"]["bytes"] > full["output"]["bytes"]
    check_integer_ops(tmp_path / "part.onnx")  # the Linear layers are still int8


def test_quantize_refuses_to_overwrite_its_source(fp32):
    with pytest.raises(ValueError, match="must differ"):
        quantize(fp32, fp32, "avx2")
