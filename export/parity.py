"""Parity machinery every export shares: ONNX Runtime sessions, matching outputs by name and
shape, top-k agreement, and the "is it int8 at all" check of a quantized graph.

A failed check raises `ParityError`, whose message carries the numbers and the limits and whose
`.report` is the check's JSON-able report. Like optimum's export validation, outputs are matched
by name and shape (`check_outputs_match`) before values are compared. The domain gates live in
`export.medication.parity` and `export.news.parity`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

TOP_K = 10

# ops that compute on (or convert from/to) 8-bit integers
INTEGER_OPS = (
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearMatMul",
    "QLinearConv",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "GatherBlockQuantized",
)
# the ops that do the heavy products in 8-bit: at least one must be present
INTEGER_MATMUL_OPS = (
    "MatMulInteger",
    "QLinearMatMul",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
)


class ParityError(AssertionError):
    """A parity check failed; the message has the numbers and limits, `.report` the details."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


# --------------------------------------------------------------------------- helpers


def session(path: Path):
    """A CPU onnxruntime session on one intra-op thread (small graphs; shared machines)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_outputs_match(
    what: str, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], ref_label: str
) -> None:
    """Raise ParityError unless `got` has exactly `ref`'s output names and shapes."""
    if list(got) != list(ref):
        raise ParityError(
            f"{what}: output names {list(got)} != {ref_label} {list(ref)}",
            {"check": what, "passed": False, "output_names": list(got), "expected": list(ref)},
        )
    bad = {n: (list(got[n].shape), list(ref[n].shape)) for n in ref if got[n].shape != ref[n].shape}
    if bad:
        detail = ", ".join(f"{n}: {g} vs {r}" for n, (g, r) in bad.items())
        raise ParityError(
            f"{what}: output shapes differ from {ref_label} ({detail})",
            {"check": what, "passed": False, "shape_mismatch": bad},
        )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))  # overflow-free


def top_k_overlap(scores_a: np.ndarray, scores_b: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per sample |top-k of a & top-k of b| / k (k capped at the number of labels)."""
    k = min(k, scores_a.shape[1])
    top_a = np.argsort(-scores_a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-scores_b, axis=1, kind="stable")[:, :k]
    hits = (top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1)
    return hits / k


# --------------------------------------------------------------------------- checks


def check_integer_ops(int8_path: Path) -> dict:
    """Count the integer ops and 8-bit initializers of the graph; raise unless it is int8.

    Passes when the graph has at least one integer product op (MatMulInteger, ...), at least
    one int8/uint8 initializer feeding an integer op, and no MatMul/Gemm left whose weight is
    a float initializer (every Linear layer quantized).
    """
    import onnx

    model = onnx.load(str(int8_path))
    graph = model.graph
    ops = Counter(n.op_type for n in graph.node)
    inits = {t.name: t for t in graph.initializer}
    eight_bit = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)

    def nbytes(t) -> int:
        return int(np.prod(t.dims, dtype=np.int64)) * (1 if t.data_type in eight_bit else 4)

    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    for t in graph.initializer:
        key = eight_bit.get(t.data_type, onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name)
        by_type[key] += 1
        bytes_by_type[key] += nbytes(t)
    fed_int8 = {
        i
        for n in graph.node
        if n.op_type in INTEGER_OPS or n.op_type == "Gather"
        for i in n.input
        if i in inits and inits[i].data_type in eight_bit and len(inits[i].dims) >= 2
    }
    float_weight_matmuls = [
        n.name or n.output[0]
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and len(n.input) > 1
        and n.input[1] in inits
        and inits[n.input[1]].data_type in floats
    ]
    n_integer = {op: ops[op] for op in INTEGER_OPS if ops[op]}
    n_products = sum(ops[op] for op in INTEGER_MATMUL_OPS)
    report = {
        "check": "integer_ops",
        "integer_ops": n_integer,
        "integer_product_ops": int(n_products),
        "initializers_by_type": dict(sorted(by_type.items())),
        "initializer_bytes_by_type": {k: int(v) for k, v in sorted(bytes_by_type.items())},
        "quantized_weight_tensors": len(fed_int8),
        "float_weight_matmuls": len(float_weight_matmuls),
        "file_bytes": Path(int8_path).stat().st_size,
    }
    failures = []
    if n_products < 1:
        failures.append(f"no integer product op ({', '.join(INTEGER_MATMUL_OPS)}): found 0")
    if by_type["int8"] + by_type["uint8"] < 1 or not fed_int8:
        failures.append(
            f"no 8-bit weight initializers in use (int8 {by_type['int8']}, "
            f"uint8 {by_type['uint8']}, feeding integer ops {len(fed_int8)}; need >= 1)"
        )
    if float_weight_matmuls:
        failures.append(
            f"{len(float_weight_matmuls)} MatMul/Gemm still multiply float weights "
            f"(limit 0): {', '.join(float_weight_matmuls[:5])}"
        )
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise ParityError(f"integer_ops in {Path(int8_path).name}: " + "; ".join(failures), report)
    return report


def check_weight_storage(int8_path: Path, min_elements: int) -> dict:
    """A weight-only int8 file (`export.medication.compact.weights_only`): raise unless it
    stores its weights in 8 bits and ONNX Runtime restores them when the session is made.

    Passes when no float table or weight matrix (a 2-D initializer of at least `min_elements`
    values: `export.graph_builder.is_weight_matrix`, the rule the writer follows) is left in
    the file, at least one 8-bit initializer is, and the graph the session runs (ONNX Runtime's
    optimised graph, saved to a temporary file) holds no 8-bit initializer any more: every
    restore was folded, so no call pays for a conversion."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from export.graph_builder import is_weight_matrix

    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)

    def survey(model) -> tuple[int, int, list[str]]:
        n8 = bytes8 = 0
        big_floats = []
        for t in model.graph.initializer:
            size = int(np.prod(t.dims, dtype=np.int64))
            if t.data_type in eight_bit:
                n8, bytes8 = n8 + 1, bytes8 + size
            elif t.data_type == onnx.TensorProto.FLOAT and is_weight_matrix(t.dims, min_elements):
                big_floats.append(t.name)
        return n8, bytes8, big_floats

    stored = onnx.load(str(int8_path))
    n8, bytes8, big_floats = survey(stored)
    with tempfile.TemporaryDirectory(prefix="pocketrec-loaded-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "loaded.onnx")
        ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
        loaded = onnx.load(opts.optimized_model_filepath)
    left8, _, _ = survey(loaded)
    report = {
        "check": "weights_8bit",
        "eight_bit_initializers": n8,
        "eight_bit_values": bytes8,
        "float_initializers_at_or_over_min": len(big_floats),  # 2-D ones
        "min_elements": min_elements,
        "eight_bit_initializers_after_load": left8,
        "nodes_in_file": len(stored.graph.node),
        "nodes_after_load": len(loaded.graph.node),
        "file_bytes": Path(int8_path).stat().st_size,
    }
    failures = []
    if big_floats:
        failures.append(
            f"{len(big_floats)} float matrices of >= {min_elements} values left (limit 0): "
            + ", ".join(big_floats[:5])
        )
    if n8 < 1:
        failures.append("no 8-bit initializer in the file (need >= 1)")
    if left8:
        failures.append(
            f"{left8} 8-bit initializers are still converted per call after loading (limit 0): "
            "ONNX Runtime did not fold their restores"
        )
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise ParityError(f"weights_8bit in {Path(int8_path).name}: " + "; ".join(failures), report)
    return report
