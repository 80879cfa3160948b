"""The news bundle's parity gates (`ParityError` from `export.parity` when one fails; nothing
is written then):

- torch vs fp32 ONNX, each encoder: max |diff| <= 1e-4 on the catalog's titles, on odd shapes
  (one item, one piece) and on the test impressions' histories (empty ones included);
- int8 vs fp32 on the held-out test impressions, computed the way the app computes (one item or
  one user per call, no padding; dynamic quantization scales activations per call, so padding
  and batch neighbours would change the numbers): |delta AUC| <= 0.01 (`distill.metrics`) and a
  mean top-5 overlap >= 0.9 of each test user's ranking of the whole catalog;
- both int8 graphs really compute in 8 bits (`export.parity.check_integer_ops`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.metrics import news_metrics
from distill.news.samples import history_rows, impression_scores
from export.parity import ParityError, check_integer_ops, session

__all__ = ["MAX_DELTA_AUC", "MIN_TOP5_OVERLAP", "TOP_K", "TORCH_ATOL", "news_parity"]

TORCH_ATOL = 1e-4
MAX_DELTA_AUC = 0.01
MIN_TOP5_OVERLAP = 0.9
TOP_K = 5


def _item_vectors_batched(sess, tokens: np.ndarray, batch: int = 512) -> np.ndarray:
    parts = [
        sess.run(None, {"tokens": tokens[s : s + batch]})[0] for s in range(0, len(tokens), batch)
    ]
    return np.concatenate(parts).astype(np.float32)


def _trimmed(row: np.ndarray) -> np.ndarray:
    """One item's ids without padding ([1, n]; a single pad for an empty title)."""
    n = int(np.count_nonzero(row))
    return row[None, : max(n, 1)]


def _item_vectors_one_by_one(sess, tokens: np.ndarray) -> np.ndarray:
    """As the app computes them: one item per call, no padding."""
    return np.concatenate([sess.run(None, {"tokens": _trimmed(r)})[0] for r in tokens])


def _users_one_by_one(sess, table: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """As the app computes them: one user per call, the real history only."""
    out = []
    for r, m in zip(rows, mask, strict=True):
        real = r[m > 0]
        if len(real):
            vecs, keep = table[real][None], np.ones((1, len(real)), np.float32)
        else:
            vecs = np.zeros((1, 1, table.shape[1]), np.float32)
            keep = np.zeros((1, 1), np.float32)
        out.append(sess.run(None, {"history_vecs": vecs, "history_mask": keep})[0])
    return np.concatenate(out)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _torch_vs_onnx(student, corpus, fp32_item: Path, fp32_user: Path, test, max_history) -> dict:
    import torch

    tokens = corpus.tokens[1:]
    isess, usess = session(fp32_item), session(fp32_user)
    with torch.no_grad():
        want_items = student.item_encoder(torch.from_numpy(tokens)).numpy()
        got_items = _item_vectors_batched(isess, tokens)
        odd = [tokens[:1, :1], _trimmed(tokens[0]), tokens[:7]]
        odd_diff = max(
            _max_diff(
                isess.run(None, {"tokens": t})[0],
                student.item_encoder(torch.from_numpy(t)).numpy(),
            )
            for t in odd
        )
        table = np.concatenate([np.zeros((1, want_items.shape[1]), np.float32), want_items])
        rows, mask = history_rows(test, corpus.index, max_history)
        vecs = table[rows]
        want_users = student.user_encoder(torch.from_numpy(vecs), torch.from_numpy(mask)).numpy()
        got_users = usess.run(None, {"history_vecs": vecs, "history_mask": mask})[0]
        one = (vecs[:1, :1], np.zeros((1, 1), np.float32))  # an empty history, batch 1
        empty_diff = _max_diff(
            usess.run(None, {"history_vecs": one[0], "history_mask": one[1]})[0],
            student.user_encoder(*(torch.from_numpy(a) for a in one)).numpy(),
        )
    report = {
        "check": "torch_vs_onnx",
        "item": {
            "n_items": int(len(tokens)),
            "max_abs_diff": max(_max_diff(got_items, want_items), odd_diff),
        },
        "user": {
            "n_users": int(len(rows)),
            "history_shape": list(vecs.shape),
            "max_abs_diff": max(_max_diff(got_users, want_users), empty_diff),
        },
        "atol": TORCH_ATOL,
    }
    failures = [
        f"{k} encoder max |torch - onnx| {report[k]['max_abs_diff']:.3g} > {TORCH_ATOL:g}"
        for k in ("item", "user")
        if not report[k]["max_abs_diff"] <= TORCH_ATOL
    ]
    report["passed"] = not failures
    if failures:
        raise ParityError("torch_vs_onnx: " + "; ".join(failures), report)
    return report


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row |top-k of a & top-k of b| / k."""
    k = min(k, a.shape[1])
    ta = np.argpartition(-a, k - 1, axis=1)[:, :k]
    tb = np.argpartition(-b, k - 1, axis=1)[:, :k]
    return (ta[:, :, None] == tb[:, None, :]).any(axis=2).sum(axis=1) / k


def _impression_metrics(test, scores: list[np.ndarray]) -> dict:
    return news_metrics((np.asarray(imp.labels), s) for imp, s in zip(test, scores, strict=True))


def _int8_vs_fp32(
    corpus, test, max_history, fp32: tuple[Path, Path], int8: tuple[Path, Path]
) -> dict:
    tokens = corpus.tokens[1:]
    rows, mask = history_rows(test, corpus.index, max_history)
    tables, users = {}, {}
    for name, (item_path, user_path) in (("fp32", fp32), ("int8", int8)):
        isess, usess = session(item_path), session(user_path)
        vecs = _item_vectors_one_by_one(isess, tokens)
        tables[name] = np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs])
        users[name] = _users_one_by_one(usess, tables[name], rows, mask)
    metrics, scores = {}, {}
    for name in ("fp32", "int8"):
        scores[name] = impression_scores(tables[name], users[name], test, corpus.index)
        metrics[name] = _impression_metrics(test, scores[name])
    catalog = {n: users[n].astype(np.float64) @ tables[n][1:].T.astype(np.float64) for n in users}
    overlap = _top_overlap(catalog["fp32"], catalog["int8"], TOP_K)
    per_imp = [
        _top_overlap(a[None], b[None], TOP_K)[0]
        for a, b in zip(scores["fp32"], scores["int8"], strict=True)
    ]
    keys = ("auc", "mrr", "ndcg5", "ndcg10")
    report = {
        "check": "int8_vs_fp32",
        "n_impressions": len(test),
        "skipped_impressions": metrics["fp32"]["skipped_impressions"],
        "computed_as": "one item / one user per call, no padding (as app.news_runtime does)",
        "fp32": {k: metrics["fp32"][k] for k in keys},
        "int8": {k: metrics["int8"][k] for k in keys},
        "delta": {k: metrics["int8"][k] - metrics["fp32"][k] for k in keys},
        f"catalog_top{TOP_K}_overlap_mean": float(overlap.mean()),
        f"catalog_top{TOP_K}_overlap_min": float(overlap.min()),
        "catalog_items": int(len(tokens)),
        f"candidate_top{TOP_K}_overlap_mean": float(np.mean(per_imp)),
        "max_abs_diff": {
            "item_vectors": _max_diff(tables["int8"], tables["fp32"]),
            "user_vectors": _max_diff(users["int8"], users["fp32"]),
            "scores": max(
                _max_diff(a, b) for a, b in zip(scores["int8"], scores["fp32"], strict=True)
            ),
        },
        "limits": {
            "max_abs_delta_auc": MAX_DELTA_AUC,
            f"min_catalog_top{TOP_K}_overlap_mean": MIN_TOP5_OVERLAP,
        },
    }
    failures = []
    d = report["delta"]["auc"]
    if not abs(d) <= MAX_DELTA_AUC:
        failures.append(
            f"|delta auc| = {abs(d):.4f} > {MAX_DELTA_AUC:g} "
            f"(fp32 {report['fp32']['auc']:.4f}, int8 {report['int8']['auc']:.4f})"
        )
    if not overlap.mean() >= MIN_TOP5_OVERLAP:
        failures.append(
            f"mean top-{TOP_K} overlap of the catalog ranking = {overlap.mean():.4f} "
            f"< {MIN_TOP5_OVERLAP:g}"
        )
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise ParityError(
            f"int8_vs_fp32 on {len(test)} test impressions: " + "; ".join(failures), report
        )
    return report


def news_parity(student, corpus, test, max_history: int, paths: dict[str, Path]) -> dict:
    """Every gate of the module docstring on the graphs at `paths` (``item_fp32``,
    ``user_fp32``, ``item_int8``, ``user_int8``); raises `ParityError` with the whole report
    when one fails."""
    import onnxruntime

    out: dict[str, Any] = {"onnxruntime": onnxruntime.__version__}
    checks = (
        (
            "torch_vs_onnx",
            lambda: _torch_vs_onnx(
                student, corpus, paths["item_fp32"], paths["user_fp32"], test, max_history
            ),
        ),
        (
            "int8_vs_fp32",
            lambda: _int8_vs_fp32(
                corpus,
                test,
                max_history,
                (paths["item_fp32"], paths["user_fp32"]),
                (paths["item_int8"], paths["user_int8"]),
            ),
        ),
        ("integer_ops_item", lambda: check_integer_ops(paths["item_int8"])),
        ("integer_ops_user", lambda: check_integer_ops(paths["user_int8"])),
    )
    errors = []
    for name, check in checks:
        try:
            out[name] = check()
        except ParityError as e:
            out[name] = (e.report or {}) | {"passed": False, "error": str(e)}
            errors.append(str(e))
    out["passed"] = not errors
    t, q = out.get("torch_vs_onnx", {}), out.get("int8_vs_fp32", {})
    out["summary"] = {
        "passed": out["passed"],
        "item_torch_vs_onnx_max_abs_diff": t.get("item", {}).get("max_abs_diff"),
        "user_torch_vs_onnx_max_abs_diff": t.get("user", {}).get("max_abs_diff"),
        "int8_delta_auc": q.get("delta", {}).get("auc"),
        "int8_auc": q.get("int8", {}).get("auc"),
        "fp32_auc": q.get("fp32", {}).get("auc"),
        f"int8_catalog_top{TOP_K}_overlap": q.get(f"catalog_top{TOP_K}_overlap_mean"),
        "n_test_impressions": q.get("n_impressions"),
    }
    if errors:
        raise ParityError("news parity failed: " + " | ".join(errors), out)
    return out
