"""The compact student graph (export.medication.compact): the same function as the torch
student in a third of the nodes, fp32 and int8, for every shape of student; and the numpy
backend, which computes the same compact form, agreeing with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from app.medication.backends import NumpyBackend, OrtBackend  # noqa: E402
from contract.layout import INPUT_NAMES  # noqa: E402
from distill.medication.student import LeaderStudent, StudentConfig  # noqa: E402
from export.graph_builder import column_int8  # noqa: E402
from export.medication.compact import (  # noqa: E402
    WEIGHT_MIN_ELEMENTS,
    build_graph,
    export_compact,
    state_of,
)
from export.medication.graph import check_graph, example_inputs, export_student  # noqa: E402
from export.medication.parity import parity_report  # noqa: E402
from export.medication.weights import save_numpy_weights  # noqa: E402
from export.parity import ParityError, check_integer_ops, check_weight_storage  # noqa: E402
from export.quantize import PRESETS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = dict(n_diagnoses=300, n_procedures=80, n_medications=40, n_profile=12, n_labels=38)
# (dim, heads, layers, repeat head, wide path, max_visits): the default shape, a deeper one,
# one with odd sizes, more labels than drugs and one learned slot, and the oldest form
SHAPES = [
    (32, 4, 1, True, True, 10),
    (16, 2, 2, True, False, 4),
    (24, 3, 1, True, True, 1),
    (8, 1, 1, False, False, 3),
]


def model_of(dim, heads, layers, repeat, wide, max_visits, seed=0, **sizes):
    cfg = StudentConfig(
        **{**SIZES, **sizes}, dim=dim, heads=heads, visit_layers=layers, repeat_head=repeat,
        wide=wide, max_visits=max_visits, teacher_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LeaderStudent(cfg).eval()
    with torch.no_grad():  # random everywhere, wide and repeat weights too (they start at 0)
        for name, p in model.named_parameters():
            scale = 1.0 if name.startswith(("repeat_", "wide")) else 0.2
            p.add_(torch.randn_like(p) * scale)
    return model, cfg


def feeds_of(cfg, batch, visits, seed, codes=None) -> dict[str, np.ndarray]:
    args = example_inputs(cfg, batch, visits, seed=seed, codes=codes)
    return {n: a.numpy() for n, a in zip(INPUT_NAMES, args, strict=True)}


def session(model_or_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    src = (
        model_or_path.SerializeToString() if hasattr(model_or_path, "graph") else str(model_or_path)
    )
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def torch_outputs(model, feeds):
    with torch.no_grad():
        logits, features = model(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    return logits.numpy(), features.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_fp32_graph_is_the_torch_student(shape):
    model, cfg = model_of(*shape)
    graph = build_graph(state_of(model), cfg)
    check_graph(graph)  # names, order and every axis symbolic
    sess = session(graph)
    # one visit, a few, more visits than max_visits; duplicate drug ids in a visit (the
    # repeat head takes a max, not a sum)
    cases = [(1, 1, 0, None), (3, 4, 1, None), (2, cfg.max_visits + 3, 2, (9, 2, 5, 3))]
    for batch, visits, seed, codes in cases:
        feeds = feeds_of(cfg, batch, visits, seed, codes)
        if visits >= 2:
            feeds["med"][0, -2, :2] = 7
        want_logits, want_features = torch_outputs(model, feeds)
        logits, features = sess.run(["logits", "features"], feeds)
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=2e-5)
        np.testing.assert_allclose(features, want_features, rtol=0, atol=2e-5)


def test_more_labels_than_drugs_and_config_as_a_dict():
    model, cfg = model_of(16, 2, 1, True, True, 5, n_medications=6, n_labels=9)
    graph = build_graph(state_of(model), cfg.to_dict())
    feeds = feeds_of(cfg, 3, 4, 5)
    np.testing.assert_allclose(
        session(graph).run(["logits"], feeds)[0], torch_outputs(model, feeds)[0], atol=2e-5
    )


def test_the_compact_graph_has_a_third_of_the_nodes(tmp_path):
    model, cfg = model_of(*SHAPES[0])
    traced = tmp_path / "traced.onnx"
    export_student(model, cfg, traced)
    compact = build_graph(state_of(model), cfg)
    assert len(compact.graph.node) * 2.5 < len(onnx.load(str(traced)).graph.node)
    # the dense products, gathers and attention are one node each
    ops = [n.op_type for n in compact.graph.node]
    assert ops.count("Attention") == cfg.visit_layers
    assert "Erf" not in ops and "Softmax" not in ops


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_int8_graph_passes_the_parity_gates(tmp_path, preset):
    model, cfg = model_of(*SHAPES[0], seed=3)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    info, record = export_compact(model, cfg, fp32, int8, preset, form="dynamic")
    feeds = feeds_of(cfg, 96, 5, 7)
    y = (np.random.default_rng(0).random((96, cfg.n_labels)) < 0.15).astype(np.float32)
    report = parity_report(model, fp32, int8, feeds, y, threshold=0.5, int8_form="dynamic")
    assert report["passed"]
    assert report["torch_vs_onnx"]["max_abs_diff"]["logits"] < 1e-4
    assert record["form"] == "dynamic"
    ints = check_integer_ops(int8)
    assert ints["float_weight_matmuls"] == 0 and ints["integer_product_ops"] >= 4
    # 8-bit weights of the preset's type; the file is a fraction of the fp32 one
    kinds = {t.data_type for t in onnx.load(str(int8)).graph.initializer}
    want = (
        onnx.TensorProto.UINT8 if PRESETS[preset].weight_type == "uint8" else onnx.TensorProto.INT8
    )
    assert want in kinds
    assert record["output"]["bytes"] < 0.4 * record["source"]["bytes"]
    assert record["name"] == preset and record["graph"] == "compact"
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(meta["pocketrec.quantization"])["name"] == preset
    assert info["student_config"] == cfg.to_dict()


def test_int8_tables_with_float_products_is_the_same_function():
    """`products="fp32"` (bench/int8_crossover.py's split of the int8 cost): 8-bit tables, every
    dense product a float one, the same outputs as the fp32 graph to 8-bit table precision,
    closer than the full int8 graph."""
    model, cfg = model_of(*SHAPES[0], seed=5)
    state = state_of(model)
    tables_only = build_graph(state, cfg, PRESETS["avx2"], products="fp32")
    ops = {n.op_type for n in tables_only.graph.node}
    assert not ops & {"DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear"}
    assert {"MatMul", "Attention"} <= ops
    q8 = [t.name for t in tables_only.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert "dx_table_q8" in q8 and "wide_dx_table_q8" in q8
    feeds = feeds_of(cfg, 64, 5, 11)
    ref = session(build_graph(state, cfg)).run(["logits"], feeds)[0]
    got = session(tables_only).run(["logits"], feeds)[0]
    full = session(build_graph(state, cfg, PRESETS["avx2"])).run(["logits"], feeds)[0]
    spread = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.02 * spread
    assert np.abs(got - ref).mean() < np.abs(full - ref).mean()
    with pytest.raises(ValueError, match="products must be one of"):
        build_graph(state, cfg, PRESETS["avx2"], products="int4")


def test_int8_count_and_repeat_tables_stay_exact():
    """Counts (the masked means' denominators) and the repeat head's 0/1 table are integers:
    8-bit storage must not round them."""
    model, cfg = model_of(*SHAPES[0], seed=4)
    graph = build_graph(state_of(model), cfg, PRESETS["avx512_vnni"])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    for kind in ("dx", "px", "med"):
        q, s = inits[f"{kind}_table_q8"], inits["set_scale"]
        assert np.all(q[1:, -1] == 1) and np.all(s[:, -1] == 1.0)
    hot = inits["med_to_label_u8"]
    assert hot.dtype == np.uint8 and set(np.unique(hot)) <= {0, 1}


def test_column_int8_scales_each_column_and_keeps_integers_exact():
    """One scale per column (max |column| / 127), rounding within half a step; integer columns
    that fit in 8 bits stored as they are; an all-zero column stays zero with scale 1 (no 0/0)."""
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(50, 3)) * np.array([0.01, 1.0, 300.0])
    counts = rng.integers(0, 100, size=(50, 1))
    big = np.full((50, 1), 1000.0)  # an integer column too big for int8: scaled like floats
    table = np.hstack([floats, counts, np.zeros((50, 1)), big]).astype(np.float32)
    q, scale = column_int8(table)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (6,)
    np.testing.assert_allclose(scale[:3], np.abs(table[:, :3]).max(axis=0) / 127, rtol=1e-6)
    assert list(scale[3:5]) == [1.0, 1.0] and np.all(q[:, 3] == counts[:, 0])
    assert np.all(q[:, 4] == 0)
    assert scale[5] == pytest.approx(1000.0 / 127) and np.all(q[:, 5] == 127)
    restored = q.astype(np.float32) * scale
    assert np.all(np.abs(restored - table) <= scale / 2 + 1e-6 * np.abs(table))


def test_weights_form_stores_8_bits_and_runs_the_fp32_graph(tmp_path):
    """The shipped form: every table and weight matrix 8-bit in the file (a third of the fp32
    file's bytes), restored when the session is made, so the session runs exactly the fp32
    graph's nodes; the gates pass, closer to fp32 than the integer-product form."""
    model, cfg = model_of(*SHAPES[0], seed=3)
    fp32, int8, dyn = (tmp_path / f"{n}.onnx" for n in ("fp32", "int8", "dynamic"))
    _, record = export_compact(model, cfg, fp32, int8, "avx2")
    export_compact(model, cfg, tmp_path / "fp32b.onnx", dyn, "avx2", form="dynamic")
    assert record["form"] == "weights" and record["name"] == "int8-weights"
    assert record["preset"] is None
    assert record["output"]["bytes"] < 0.35 * record["source"]["bytes"]
    stored = check_weight_storage(int8, WEIGHT_MIN_ELEMENTS)
    assert stored["eight_bit_initializers"] >= 10
    assert stored["eight_bit_initializers_after_load"] == 0
    assert stored["nodes_after_load"] <= len(onnx.load(str(fp32)).graph.node)
    assert stored["nodes_in_file"] > stored["nodes_after_load"]  # the restores were folded
    feeds = feeds_of(cfg, 96, 5, 7)
    y = (np.random.default_rng(0).random((96, cfg.n_labels)) < 0.15).astype(np.float32)
    report = parity_report(model, fp32, int8, feeds, y, threshold=0.5, int8_form="weights")
    assert report["passed"] and "weights_8bit" in report and "integer_ops" not in report
    assert report["summary"]["eight_bit_initializers_after_load"] == 0
    ref = session(fp32).run(["logits"], feeds)[0]
    err_w = np.abs(session(int8).run(["logits"], feeds)[0] - ref).mean()
    err_d = np.abs(session(dyn).run(["logits"], feeds)[0] - ref).mean()
    assert 0 < err_w < err_d
    # the count columns stay exact in 8 bits
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(int8)).graph.initializer}
    assert np.all(inits["dx_table_scale"][-1] == 1.0) and np.all(inits["dx_table_q8"][1:, 32] == 1)


def test_weights_form_of_a_wide_student_passes_its_gate(tmp_path):
    """At width 256 the MLP's [256, 1024] weight leaves a 1024-value scale vector and bias
    beside it: 1-D, float by design, and not what the gate looks for (it once refused them)."""
    model, cfg = model_of(256, 4, 1, True, True, 10, seed=5)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_compact(model, cfg, fp32, int8, "avx2")
    inits = {t.name: tuple(t.dims) for t in onnx.load(str(int8)).graph.initializer}
    assert inits["mlp0_0_w_scale"] == (1024,) and inits["mlp0_0_b"] == (1024,)
    stored = check_weight_storage(int8, WEIGHT_MIN_ELEMENTS)
    assert stored["passed"] and stored["eight_bit_initializers_after_load"] == 0


def test_weight_storage_gate_refuses_float_or_per_call_conversion(tmp_path):
    model, cfg = model_of(*SHAPES[0], seed=3)
    fp32, dyn = tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx"
    export_compact(model, cfg, fp32, dyn, "avx2", form="dynamic")
    with pytest.raises(ParityError, match="float matrices of >= 1024 values left"):
        check_weight_storage(fp32, WEIGHT_MIN_ELEMENTS)
    # the integer-product form reads its 8-bit tables per call: not a storage-only file
    with pytest.raises(ParityError, match="still converted per call"):
        check_weight_storage(dyn, WEIGHT_MIN_ELEMENTS)
    with pytest.raises(ValueError, match="form must be one of weights, dynamic"):
        export_compact(model, cfg, fp32, dyn, "avx2", form="int4")


@pytest.mark.parametrize("form", ["weights", "dynamic"])
def test_numpy_backend_agrees_with_the_compact_graphs(tmp_path, form):
    model, cfg = model_of(*SHAPES[0], seed=5)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_compact(model, cfg, fp32, int8, "avx2", form=form)
    save_numpy_weights(model, cfg, tmp_path / "w.npz")
    engine = NumpyBackend(tmp_path / "w.npz", cfg.to_dict())
    ort32, ort8 = OrtBackend(fp32), OrtBackend(int8)
    for batch, visits, seed in ((1, 1, 0), (1, 3, 1), (4, 6, 2), (2, cfg.max_visits + 2, 3)):
        feeds = feeds_of(cfg, batch, visits, seed)
        got = engine.run(feeds)
        np.testing.assert_allclose(got, ort32.run(feeds), rtol=0, atol=2e-5)
        # int8: the ranking holds (the parity gate's measure), the values move a little
        q = ort8.run(feeds)
        assert np.abs(q - got).max() < 0.5
        top = np.argsort(-got, axis=1)[:, :10]
        top8 = np.argsort(-q, axis=1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, top8, strict=True)])
        assert overlap >= 0.9


def test_numpy_gelu_is_exact_to_float32():
    import math

    from app.medication.backends import _gelu

    for n in (7, 500):  # both code paths (np.interp for small arrays, the table lookup above)
        x = np.random.default_rng(n).normal(0, 4, n).astype(np.float32)
        x[:5] = (-1e30, -30.0, 0.0, 30.0, 1e30)
        want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(float)])
        got = _gelu(x)
        assert got.dtype == np.float32
        assert np.all(np.abs(got - want) <= 1e-6 * np.maximum(1.0, np.abs(want)))


@pytest.mark.parametrize("wide_codes", ["mean", "sqrt"])
def test_wide_codes_scaled_matches_torch(tmp_path, wide_codes):
    """A student whose wide path reads the current visit's codes summed times (scale / n)^p
    (`wide_codes` "mean": p = 1, "sqrt": p = 1/2): the compact graphs and the numpy backend
    (told by its config) compute it too."""
    import dataclasses

    model, cfg = model_of(*SHAPES[0], seed=6)
    cfg = dataclasses.replace(cfg, wide_codes=wide_codes, wide_codes_scale=7.5)
    mean_model = LeaderStudent(cfg).eval()
    mean_model.load_state_dict(model.state_dict())
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_compact(mean_model, cfg, fp32, int8, "avx2")
    save_numpy_weights(mean_model, cfg, tmp_path / "w.npz")
    engine = NumpyBackend(tmp_path / "w.npz", cfg.to_dict())
    for batch, visits, seed in ((1, 1, 0), (3, 4, 1), (2, 12, 2)):
        feeds = feeds_of(cfg, batch, visits, seed)
        feeds["dx"][0, -1] = 0  # a current visit with no diagnosis: the count is clamped to 1
        want, _ = torch_outputs(mean_model, feeds)
        assert np.abs(want - torch_outputs(model, feeds)[0]).max() > 1e-3  # the scale matters
        np.testing.assert_allclose(session(fp32).run(["logits"], feeds)[0], want, atol=2e-5)
        np.testing.assert_allclose(engine.run(feeds), want, atol=2e-5)
        assert np.abs(session(int8).run(["logits"], feeds)[0] - want).max() < 0.5
