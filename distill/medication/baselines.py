"""The two simple medication baselines every report carries.

- popularity: the k most frequent training drugs for everyone, k chosen on validation;
- previous_visit: the drugs of the patient's previous visit; popularity for a first visit.
Both give scores too (for PR-AUC): training frequency, lifted by 1 for the previous visit's drugs.
"""

from __future__ import annotations

import numpy as np

from distill.metrics import jaccard


def label_frequency(y_train: np.ndarray) -> np.ndarray:
    return y_train.mean(axis=0).astype(np.float64)


def top_k_mask(freq: np.ndarray, k: int) -> np.ndarray:
    """Bool [L] of the k most frequent labels (ties broken by label index, for determinism)."""
    order = np.lexsort((np.arange(len(freq)), -freq))
    mask = np.zeros(len(freq), dtype=bool)
    mask[order[:k]] = True
    return mask


def choose_k(freq: np.ndarray, y_val: np.ndarray, max_k: int | None = None) -> int:
    """The k whose top-k popularity has the best validation Jaccard (the smallest on ties)."""
    max_k = min(max_k or len(freq), len(freq))
    scores = [
        jaccard(y_val, np.broadcast_to(top_k_mask(freq, k), y_val.shape))
        for k in range(1, max_k + 1)
    ]
    return int(np.argmax(scores)) + 1


def popularity(freq: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, L], predictions [n, L])."""
    scores = np.broadcast_to(freq, (n, len(freq))).astype(np.float32)
    pred = np.broadcast_to(top_k_mask(freq, k), (n, len(freq))).copy()
    return scores.copy(), pred


def previous_visit(
    prev: np.ndarray, has_prev: np.ndarray, freq: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """prev: multi-hot [n, L] of the previous visit's drugs; has_prev: bool [n]."""
    n = len(prev)
    pop_scores, pop_pred = popularity(freq, k, n)
    scores = pop_scores + prev.astype(np.float32)  # previous drugs first, then by frequency
    pred = np.where(has_prev[:, None], prev.astype(bool), pop_pred)
    return scores, pred
