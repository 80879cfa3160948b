"""Parity gates for a shipped student: torch vs fp32 ONNX, int8 vs fp32, and "is it int8 at all".

Every check runs real onnxruntime sessions (CPU provider) and returns a JSON-able report with
its numbers and limits; a failed check raises `ParityError`, whose message carries the numbers
and the limits and whose `.report` is the same report. `parity_report` runs all three and
gives one dict for the bundle manifest.

Like optimum's export validation, the outputs are matched by name and shape before values are
compared: the ONNX graph must produce exactly ("logits", "features"), and the int8 graph the
same names and shapes as the fp32 graph.

int8 vs fp32 is judged on held-out samples by what the app shows, not by raw values:
|delta PR-AUC| and |delta Jaccard| (predictions = sigmoid(logits) >= threshold, the threshold
chosen on validation) at most 0.01, and the mean top-10 overlap (per sample
|top10_int8 & top10_fp32| / 10) at least 0.9. Raw max |delta| of logits and features is
reported too, without a limit: dynamic quantization moves logits by ~0.1 while rankings hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from distill.data.tensors import INPUT_NAMES

OUTPUT_NAMES = ("logits", "features")
TORCH_ATOL = 1e-4
MAX_DELTA_PRAUC = 0.01
MAX_DELTA_JACCARD = 0.01
MIN_TOP10_OVERLAP = 0.9
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


def as_feeds(inputs) -> dict[str, np.ndarray]:
    """Model inputs as ONNX Runtime feeds: int64 ids, float32 visit_mask.

    `inputs`: a mapping with (at least) the `INPUT_NAMES` keys -- extra keys such as "y" from
    `encode_samples` are ignored -- or a sequence in `INPUT_NAMES` order; numpy arrays or torch
    tensors.
    """
    if isinstance(inputs, Mapping):
        missing = [n for n in INPUT_NAMES if n not in inputs]
        if missing:
            raise ValueError(f"inputs lack {missing}; expected keys {INPUT_NAMES}")
        values = [inputs[n] for n in INPUT_NAMES]
    elif isinstance(inputs, Sequence) and len(inputs) == len(INPUT_NAMES):
        values = list(inputs)
    else:
        raise ValueError(f"inputs must be a mapping or a {len(INPUT_NAMES)}-sequence")
    feeds = {}
    for name, value in zip(INPUT_NAMES, values, strict=True):
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().numpy()
        dtype = np.float32 if name == "visit_mask" else np.int64
        feeds[name] = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    n = {len(v) for v in feeds.values()}
    if len(n) != 1:
        raise ValueError(f"inputs disagree on the batch size: {sorted(n)}")
    if n == {0}:
        raise ValueError("inputs hold no samples")
    return feeds


def session(path: Path):
    """A CPU onnxruntime session on one intra-op thread (small graphs; shared machines)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, inputs) -> dict[str, np.ndarray]:
    """All outputs of the graph at `path` on `inputs`, by output name."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, as_feeds(inputs)), strict=True))


def _check_names_and_shapes(
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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))  # overflow-free


def top_k_overlap(scores_a: np.ndarray, scores_b: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per sample |top-k of a & top-k of b| / k (k capped at the number of labels)."""
    k = min(k, scores_a.shape[1])
    top_a = np.argsort(-scores_a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-scores_b, axis=1, kind="stable")[:, :k]
    hits = (top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1)
    return hits / k


# --------------------------------------------------------------------------- checks


def check_torch_vs_onnx(model, onnx_path: Path, inputs, atol: float = TORCH_ATOL) -> dict:
    """Max |torch - ONNX| of logits and features on `inputs`; raises ParityError above `atol`."""
    import torch

    feeds = as_feeds(inputs)
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            outs = model(*(torch.from_numpy(feeds[n]).to(device) for n in INPUT_NAMES))
    finally:
        model.train(was_training)
    want = {n: o.detach().cpu().numpy() for n, o in zip(OUTPUT_NAMES, outs, strict=True)}
    got = run_onnx(onnx_path, feeds)
    what = "torch_vs_onnx"
    _check_names_and_shapes(what, want, got, "torch outputs")

    diffs = {n: float(np.abs(got[n].astype(np.float64) - want[n]).max()) for n in OUTPUT_NAMES}
    finite = all(np.isfinite(got[n]).all() for n in OUTPUT_NAMES)
    report = {
        "check": what,
        "n_samples": int(len(feeds["dx"])),
        "input_shapes": {n: list(a.shape) for n, a in feeds.items()},
        "output_shapes": {n: list(a.shape) for n, a in got.items()},
        "max_abs_diff": diffs,
        "atol": atol,
        "passed": finite and max(diffs.values()) <= atol,
    }
    if not report["passed"]:
        detail = ", ".join(f"{n} {d:.3g}" for n, d in diffs.items())
        raise ParityError(
            f"{what}: max |torch - onnx| {detail} exceeds atol {atol:g}"
            + ("" if finite else " (non-finite ONNX outputs)"),
            report,
        )
    return report


def check_int8_vs_fp32(
    fp32_path: Path,
    int8_path: Path,
    inputs,
    y_true,
    threshold: float,
    ddi_pairs=None,
    *,
    max_delta_prauc: float = MAX_DELTA_PRAUC,
    max_delta_jaccard: float = MAX_DELTA_JACCARD,
    min_top10_overlap: float = MIN_TOP10_OVERLAP,
) -> dict:
    """Compare the int8 graph with the fp32 graph on held-out samples (see module docstring).

    `y_true`: 0/1 [n, n_labels]; `threshold`: the decision threshold on sigmoid(logits);
    `ddi_pairs`: optional label-index pairs -- the DDI rate of both is reported (no limit).
    """
    from distill.metrics import ddi_rate, jaccard, prauc

    feeds = as_feeds(inputs)
    ref = run_onnx(fp32_path, feeds)
    got = run_onnx(int8_path, feeds)
    what = "int8_vs_fp32"
    _check_names_and_shapes(what, ref, got, "fp32 outputs")
    y_true = np.asarray(y_true)
    if y_true.shape != ref["logits"].shape:
        raise ValueError(f"y_true has shape {y_true.shape}, logits {ref['logits'].shape}")
    if not np.isfinite(got["logits"]).all():
        raise ParityError(f"{what}: the int8 logits are not all finite", {"check": what})

    p32, p8 = _sigmoid(ref["logits"]), _sigmoid(got["logits"])
    pred32, pred8 = p32 >= threshold, p8 >= threshold
    metrics = {
        "prauc": (prauc(y_true, p32), prauc(y_true, p8)),
        "jaccard": (jaccard(y_true, pred32), jaccard(y_true, pred8)),
    }
    if ddi_pairs is not None:
        metrics["ddi_rate"] = (ddi_rate(pred32, ddi_pairs), ddi_rate(pred8, ddi_pairs))
    overlap = top_k_overlap(p32, p8)
    k = min(TOP_K, p32.shape[1])
    report = {
        "check": what,
        "n_samples": int(len(y_true)),
        "threshold": float(threshold),
        "fp32": {m: float(a) for m, (a, _) in metrics.items()},
        "int8": {m: float(b) for m, (_, b) in metrics.items()},
        "delta": {m: float(b - a) for m, (a, b) in metrics.items()},
        f"top{TOP_K}_overlap_mean": float(overlap.mean()),
        f"top{TOP_K}_overlap_min": float(overlap.min()),
        "top_k": k,
        "decision_flip_rate": float((pred32 != pred8).mean()),
        "max_abs_diff": {
            n: float(np.abs(got[n].astype(np.float64) - ref[n]).max()) for n in OUTPUT_NAMES
        },
        "max_abs_prob_diff": float(np.abs(p8 - p32).max()),
        "limits": {
            "max_abs_delta_prauc": max_delta_prauc,
            "max_abs_delta_jaccard": max_delta_jaccard,
            f"min_top{TOP_K}_overlap_mean": min_top10_overlap,
        },
    }
    failures = []
    for m, limit in (("prauc", max_delta_prauc), ("jaccard", max_delta_jaccard)):
        d = report["delta"][m]
        if not abs(d) <= limit:
            failures.append(
                f"|delta {m}| = {abs(d):.4f} > {limit:g} "
                f"(fp32 {report['fp32'][m]:.4f}, int8 {report['int8'][m]:.4f})"
            )
    mean_overlap = report[f"top{TOP_K}_overlap_mean"]
    if not mean_overlap >= min_top10_overlap:
        failures.append(f"mean top-{k} overlap = {mean_overlap:.4f} < {min_top10_overlap:g}")
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise ParityError(f"{what} on {len(y_true)} samples: " + "; ".join(failures), report)
    return report


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


def _summary(out: dict) -> dict:
    """The headline numbers of a parity report, flat (for a model card)."""
    t, q, i = out.get("torch_vs_onnx", {}), out.get("int8_vs_fp32", {}), out.get("integer_ops", {})
    summary = {"passed": out["passed"]}
    if "max_abs_diff" in t:
        summary["torch_vs_onnx_max_abs_diff"] = max(t["max_abs_diff"].values())
    for m in ("prauc", "jaccard"):
        if m in q.get("delta", {}):
            summary[f"int8_delta_{m}"] = q["delta"][m]
    if f"top{TOP_K}_overlap_mean" in q:
        summary[f"int8_top{TOP_K}_overlap"] = q[f"top{TOP_K}_overlap_mean"]
    if "n_samples" in q:
        summary["n_samples"] = q["n_samples"]
    if "integer_product_ops" in i:
        summary["integer_product_ops"] = i["integer_product_ops"]
    return summary


def parity_report(
    model,
    fp32_path: Path,
    int8_path: Path,
    inputs,
    y_true,
    threshold: float,
    ddi_pairs=None,
    *,
    atol: float = TORCH_ATOL,
    raise_on_failure: bool = True,
) -> dict:
    """All three checks on the same held-out `inputs`, as one JSON-able dict.

    Keys: "torch_vs_onnx", "int8_vs_fp32", "integer_ops" (each check's report, with
    "passed"), "passed", "summary" (the headline numbers, flat) and "onnxruntime" (version).
    Every check runs even if an earlier one fails; with `raise_on_failure` a failure then
    raises one ParityError listing every failed check (`.report` is the whole dict).
    """
    import onnxruntime

    checks = (
        ("torch_vs_onnx", lambda: check_torch_vs_onnx(model, fp32_path, inputs, atol=atol)),
        (
            "int8_vs_fp32",
            lambda: check_int8_vs_fp32(
                fp32_path, int8_path, inputs, y_true, threshold, ddi_pairs=ddi_pairs
            ),
        ),
        ("integer_ops", lambda: check_integer_ops(int8_path)),
    )
    out: dict = {"onnxruntime": onnxruntime.__version__}
    errors = []
    for name, run in checks:
        try:
            out[name] = run()
        except ParityError as e:
            out[name] = e.report | {"passed": False, "error": str(e)}
            errors.append(str(e))
    out["passed"] = not errors
    out["summary"] = _summary(out)
    if errors and raise_on_failure:
        raise ParityError("parity failed: " + " | ".join(errors), out)
    return out
