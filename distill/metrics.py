"""Evaluation metrics for the medication and news recommenders (pure numpy).

Conventions shared by every function in this module
----------------------------------------------------

Medication recommendation (multi-label, one row per visit/sample):

* ``y_true`` / ``y_pred`` are 2-D arrays of shape ``[n_samples, n_labels]`` holding
  0/1 values (``bool``, integer or float 0.0/1.0 are all accepted; anything else raises
  ``ValueError``). ``y_score`` is a 2-D real array of the same shape (NaN rejected).
* Set metrics (:func:`jaccard`, :func:`f1`, :func:`prauc`) are computed per sample and
  then averaged over samples, as GAMENet / SafeDrug do. :func:`ddi_rate` is instead
  *pooled* over all samples (also as GAMENet / SafeDrug / PyHealth do).
* ``n_samples`` must be at least 1; ``n_labels`` may be 0 (every set is then empty).

News recommendation (one impression = the candidate list shown to a user once):

* ``labels`` is a 1-D 0/1 array (1 = clicked) and ``scores`` a 1-D real array of the same
  length. Metrics are computed per impression and averaged by :func:`news_metrics`, as
  the MIND competition scorer does.
* Ranking by score uses a deterministic tie-break: among equal scores the candidate at
  the *later* position is ranked first. This reproduces the MIND scorer's
  ``np.argsort(scores)[::-1]`` whenever numpy's default sort happens to be stable
  (e.g. for short arrays); the MIND scorer itself is not deterministic on ties.
  :func:`auc` does not depend on tie-breaking (ties count one half).

Errors: a 1-D array where a 2-D one is needed (or vice versa), arrays whose shapes
differ (the message names both shapes), non-0/1 labels, NaN scores and empty sample
sets raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "auc",
    "average_precision_per_sample",
    "avg_drugs",
    "ddi_rate",
    "f1",
    "jaccard",
    "jaccard_per_sample",
    "medication_metrics",
    "mrr",
    "ndcg",
    "news_metrics",
    "prauc",
]


# --------------------------------------------------------------------------- validation


def _binary(name: str, a, ndim: int) -> np.ndarray:
    """Return ``a`` as a bool array after checking its rank and that it only holds 0/1."""
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 values")
    if ndim == 2 and arr.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {arr.shape})")
    return arr.astype(bool)


def _real(name: str, a, ndim: int) -> np.ndarray:
    """Return ``a`` as a float64 array after checking its rank and rejecting NaN."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if ndim == 2 and arr.shape[0] == 0:
        raise ValueError(f"{name} has no samples (shape {arr.shape})")
    return arr


def _same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


# --------------------------------------------------------------------------- medication


def jaccard(y_true, y_pred) -> float:
    """Mean per-sample Jaccard index between true and predicted label sets.

    ``y_true``, ``y_pred``: 0/1 arrays ``[n_samples, n_labels]``. Each sample scores
    ``|T & P| / |T | P|``; a sample whose true and predicted sets are both empty scores
    0 (the convention GAMENet / SafeDrug intend -- their code writes ``0 if union == 0``).
    Returns the mean over samples, in ``[0, 1]``.
    """
    return float(jaccard_per_sample(y_true, y_pred).mean())


def jaccard_per_sample(y_true, y_pred) -> np.ndarray:
    """The per-sample Jaccard indices [n_samples] that :func:`jaccard` averages."""
    t = _binary("y_true", y_true, 2)
    p = _binary("y_pred", y_pred, 2)
    _same_shape("y_true", t, "y_pred", p)
    inter = (t & p).sum(axis=1)
    union = (t | p).sum(axis=1)
    return np.divide(inter, union, out=np.zeros(len(t)), where=union > 0)


def f1(y_true, y_pred) -> float:
    """Mean per-sample F1 between true and predicted label sets (GAMENet convention).

    ``y_true``, ``y_pred``: 0/1 arrays ``[n_samples, n_labels]``. Per sample, precision
    ``P = |T & P| / |P|`` (0 when nothing is predicted), recall ``R = |T & P| / |T|``
    (0 when the true set is empty) and ``F1 = 2PR / (P + R)`` (0 when ``P + R = 0``).
    Returns the mean over samples, in ``[0, 1]``.
    """
    t = _binary("y_true", y_true, 2)
    p = _binary("y_pred", y_pred, 2)
    _same_shape("y_true", t, "y_pred", p)
    inter = (t & p).sum(axis=1).astype(np.float64)
    n_pred, n_true = p.sum(axis=1), t.sum(axis=1)
    zeros = np.zeros(len(t))
    prec = np.divide(inter, n_pred, out=zeros.copy(), where=n_pred > 0)
    rec = np.divide(inter, n_true, out=zeros.copy(), where=n_true > 0)
    denom = prec + rec
    per_sample = np.divide(2 * prec * rec, denom, out=zeros.copy(), where=denom > 0)
    return float(per_sample.mean())


def prauc(y_true, y_score) -> float:
    """Mean per-sample average precision (area under the precision-recall curve).

    ``y_true``: 0/1 array ``[n_samples, n_labels]``; ``y_score``: real array of the same
    shape (higher = more likely). For each sample, AP is computed over its labels with
    scikit-learn's ``average_precision_score`` definition: ``sum_n (R_n - R_{n-1}) P_n``
    where ``n`` runs over the *distinct* score values in decreasing order (a threshold
    admits every label scoring at least that value, so tied labels enter together) and
    ``R_0 = 0``. Samples without any positive label are skipped (AP is undefined for
    them); if no sample has a positive the result is 0.0.
    """
    ap = average_precision_per_sample(y_true, y_score)
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if len(ap) else 0.0


def average_precision_per_sample(y_true, y_score) -> np.ndarray:
    """The per-sample average precisions [n_samples] that :func:`prauc` averages; NaN for a
    sample without any positive label (AP is undefined there, and :func:`prauc` skips it)."""
    t = _binary("y_true", y_true, 2)
    s = _real("y_score", y_score, 2)
    _same_shape("y_true", t, "y_score", s)
    n_pos = t.sum(axis=1)
    keep = n_pos > 0
    out = np.full(len(t), np.nan)
    if not keep.any():
        return out
    t, s, n_pos = t[keep], s[keep], n_pos[keep]
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    tp = np.cumsum(np.take_along_axis(t, order, axis=1), axis=1)
    # Position i closes a threshold group if the next score is different (or i is last).
    is_end = np.ones_like(tp, dtype=bool)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    # True positives admitted by the previous threshold: tp is non-decreasing, so a
    # running max over group-end values (shifted by one position) gives it.
    tp_at_ends = np.where(is_end, tp, 0)
    prev_tp = np.zeros_like(tp)
    prev_tp[:, 1:] = np.maximum.accumulate(tp_at_ends, axis=1)[:, :-1]
    n_admitted = np.arange(1, t.shape[1] + 1)
    terms = np.where(is_end, (tp - prev_tp) * (tp / n_admitted), 0.0)
    out[keep] = terms.sum(axis=1) / n_pos
    return out


def _ddi_adjacency(ddi_pairs: Iterable, n_labels: int) -> np.ndarray:
    """Symmetric ``[n_labels, n_labels]`` 0/1 float matrix with a zero diagonal."""
    pairs = np.asarray([tuple(pair) for pair in ddi_pairs])
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"ddi_pairs must be (i, j) index pairs, got shape {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"ddi_pairs must hold integer label indices, got {pairs.dtype}")
    if ((pairs < 0) | (pairs >= n_labels)).any():
        raise ValueError(f"ddi_pairs has a label index outside [0, {n_labels})")
    adj = np.zeros((n_labels, n_labels))
    adj[pairs[:, 0], pairs[:, 1]] = 1.0
    adj[pairs[:, 1], pairs[:, 0]] = 1.0
    np.fill_diagonal(adj, 0.0)
    return adj


def ddi_rate(y_pred, ddi_pairs) -> float:
    """Fraction of predicted label pairs that are known drug-drug interactions, pooled.

    ``y_pred``: 0/1 array ``[n_samples, n_labels]``. ``ddi_pairs``: iterable of integer
    ``(i, j)`` label-index pairs (or an ``[m, 2]`` integer array). Pairs are undirected:
    order, duplicates and both-order listings do not matter, and self-pairs ``(i, i)``
    are ignored (a drug never forms a pair with itself).

    Pooled over all samples (GAMENet / SafeDrug / PyHealth): the number of unordered
    predicted pairs ``{i < j}`` (summed over samples) that are DDI pairs, divided by the
    number of unordered predicted pairs summed over samples. This is *not* the mean of
    per-sample rates. Returns 0.0 when no sample predicts two or more labels.
    """
    p = _binary("y_pred", y_pred, 2).astype(np.float64)
    adj = _ddi_adjacency(ddi_pairs, p.shape[1])
    # p^T A p counts each unordered interacting pair twice (A symmetric, zero diagonal).
    ddi_pairs_total = ((p @ adj) * p).sum() / 2
    k = p.sum(axis=1)
    all_pairs_total = (k * (k - 1) / 2).sum()
    if all_pairs_total == 0:
        return 0.0
    return float(ddi_pairs_total / all_pairs_total)


def avg_drugs(y_pred) -> float:
    """Mean number of predicted labels per sample; ``y_pred`` is 0/1 ``[n_samples, n_labels]``."""
    return float(_binary("y_pred", y_pred, 2).sum(axis=1).mean())


def medication_metrics(y_true, y_score, threshold: float, ddi_pairs) -> dict:
    """All medication metrics at once; predictions are ``y_score >= threshold``.

    ``prauc`` uses the raw ``y_score``; the other metrics use the thresholded
    predictions. Returns ``{"jaccard", "f1", "prauc", "ddi_rate", "avg_drugs"}``.
    """
    s = _real("y_score", y_score, 2)
    y_pred = s >= threshold
    return {
        "jaccard": jaccard(y_true, y_pred),
        "f1": f1(y_true, y_pred),
        "prauc": prauc(y_true, s),
        "ddi_rate": ddi_rate(y_pred, ddi_pairs),
        "avg_drugs": avg_drugs(y_pred),
    }


# --------------------------------------------------------------------------- news


def _impression(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = _binary("labels", labels, 1)
    s = _real("scores", scores, 1)
    _same_shape("labels", y, "scores", s)
    return y, s


def _ranked(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Labels reordered by decreasing score; ties put the later position first."""
    return y[np.argsort(s, kind="stable")[::-1]]


def auc(labels, scores) -> float:
    """ROC AUC of one impression (Mann-Whitney U; a tied positive/negative pair counts 1/2).

    ``labels``: 1-D 0/1 array; ``scores``: 1-D real array of the same length. Equals the
    fraction of (positive, negative) pairs where the positive scores higher, ties
    counting one half. Raises ``ValueError`` if the impression has no positive or no
    negative label, since AUC is then undefined.
    """
    y, s = _impression(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"auc needs at least one positive and one negative label "
            f"(got {n_pos} positive, {n_neg} negative)"
        )
    # 1-based ranks with ties replaced by the mean rank of their group.
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    rank_sum_pos = mean_rank[group.reshape(-1)][y].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mrr(labels, scores) -> float:
    """MIND-scorer mean reciprocal rank of one impression.

    Candidates are ranked by decreasing score (rank 1 = top); returns
    ``sum over clicked candidates of 1/rank`` divided by the number of clicked
    candidates. Raises ``ValueError`` if no label is positive.
    """
    y, s = _impression(labels, scores)
    n_pos = y.sum()
    if n_pos == 0:
        raise ValueError("mrr needs at least one positive label")
    ranks = np.arange(1, len(y) + 1)
    return float((_ranked(y, s) / ranks).sum() / n_pos)


def _dcg(rel_ranked: np.ndarray, k: int) -> float:
    """DCG of relevances already in ranked order: ``sum (2^rel - 1) / log2(rank + 1)``."""
    top = rel_ranked[:k].astype(np.float64)
    return float(((2.0**top - 1) / np.log2(np.arange(2, len(top) + 2))).sum())


def ndcg(labels, scores, k: int) -> float:
    """MIND-scorer nDCG@k of one impression.

    ``dcg(labels ranked by scores, k) / dcg(labels ranked by labels, k)`` where
    ``dcg = sum over the top k of (2^rel - 1) / log2(rank + 1)`` (rank 1 = top). If the
    impression has fewer than ``k`` candidates all of them are used. ``k`` must be a
    positive integer; raises ``ValueError`` if no label is positive (ideal DCG is 0).
    """
    y, s = _impression(labels, scores)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not y.any():
        raise ValueError("ndcg needs at least one positive label")
    y = y.astype(np.int64)
    ideal = _dcg(np.sort(y)[::-1], k)
    return _dcg(_ranked(y, s), k) / ideal


def news_metrics(impressions: Iterable) -> dict:
    """Mean AUC, MRR, nDCG@5 and nDCG@10 over impressions, as the MIND scorer reports.

    ``impressions``: iterable of ``(labels, scores)`` pairs, each as for :func:`auc`.
    Impressions without at least one positive *and* one negative label are skipped for
    all four metrics (so every metric averages over the same impressions) and counted
    under ``"skipped_impressions"``. Returns ``{"auc", "mrr", "ndcg5", "ndcg10",
    "skipped_impressions"}``; the four means are 0.0 if every impression was skipped.
    Malformed impressions (shape mismatch, non-0/1 labels, NaN) still raise.
    """
    rows = []
    skipped = 0
    for labels, scores in impressions:
        y, s = _impression(labels, scores)
        if y.all() or not y.any():
            skipped += 1
            continue
        rows.append((auc(y, s), mrr(y, s), ndcg(y, s, 5), ndcg(y, s, 10)))
    means = np.mean(rows, axis=0) if rows else np.zeros(4)
    keys = ("auc", "mrr", "ndcg5", "ndcg10")
    result = {key: float(v) for key, v in zip(keys, means, strict=True)}
    result["skipped_impressions"] = skipped
    return result
