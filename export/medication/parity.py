"""Parity gates for a shipped medication student: torch vs fp32 ONNX, int8 vs fp32, and "is it
int8 at all" (integer products for the "dynamic" form; for the "weights" form, 8-bit storage that
ONNX Runtime restores when the session is made).

Every check runs real onnxruntime sessions (CPU provider) and returns a JSON-able report with
its numbers and limits; a failed check raises `ParityError`, whose message carries the numbers
and the limits and whose `.report` is the same report. `parity_report` runs all three and
gives one dict for the bundle manifest (the shared machinery is `export.parity`).

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

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from contract.layout import INPUT_NAMES, OUTPUT_NAMES
from export.parity import (
    TOP_K,
    ParityError,
    check_integer_ops,
    check_outputs_match,
    check_weight_storage,
    session,
    sigmoid,
    top_k_overlap,
)

TORCH_ATOL = 1e-4
MAX_DELTA_PRAUC = 0.01
MAX_DELTA_JACCARD = 0.01
MIN_TOP10_OVERLAP = 0.9


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


def run_onnx(path: Path, inputs) -> dict[str, np.ndarray]:
    """All outputs of the graph at `path` on `inputs`, by output name."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, as_feeds(inputs)), strict=True))


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
    check_outputs_match(what, want, got, "torch outputs")

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
    check_outputs_match(what, ref, got, "fp32 outputs")
    y_true = np.asarray(y_true)
    if y_true.shape != ref["logits"].shape:
        raise ValueError(f"y_true has shape {y_true.shape}, logits {ref['logits'].shape}")
    if not np.isfinite(got["logits"]).all():
        raise ParityError(f"{what}: the int8 logits are not all finite", {"check": what})

    p32, p8 = sigmoid(ref["logits"]), sigmoid(got["logits"])
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
    w = out.get("weights_8bit", {})
    if "eight_bit_initializers" in w:
        summary["eight_bit_initializers"] = w["eight_bit_initializers"]
        summary["eight_bit_initializers_after_load"] = w["eight_bit_initializers_after_load"]
    return summary


def storage_check(int8_path: Path, int8_form: str):
    """(name, check) of the "is it int8" gate for an int8 file of `int8_form`
    (`export.medication.compact.INT8_FORMS`)."""
    from export.medication.compact import INT8_FORMS, WEIGHT_MIN_ELEMENTS

    if int8_form not in INT8_FORMS:
        raise ValueError(f"int8_form must be one of {', '.join(INT8_FORMS)}; got {int8_form!r}")
    if int8_form == "weights":
        return "weights_8bit", lambda: check_weight_storage(int8_path, WEIGHT_MIN_ELEMENTS)
    return "integer_ops", lambda: check_integer_ops(int8_path)


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
    int8_form: str,
) -> dict:
    """All three checks on the same held-out `inputs`, as one JSON-able dict. `int8_form`
    (`export.medication.compact.INT8_FORMS`, no default: the two forms have different "is it
    int8" gates, and a wrong one fails a good file) names the int8 file's form.

    Keys: "torch_vs_onnx", "int8_vs_fp32", "integer_ops" or, for `int8_form="weights"`,
    "weights_8bit" (each check's report, with
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
        storage_check(int8_path, int8_form),
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
