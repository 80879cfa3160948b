"""Deterministic patient splits, so any other tool can be measured on exactly the same folds.

Patient `p` is in fold `int(sha256(str(p).encode()).hexdigest(), 16) % k`. Inside the training
folds it is a validation patient when `int(sha256(("val:" + str(p)).encode()).hexdigest(), 16) % 8
== 0`. A non-zero `seed` salts both hashes ("<seed>:" before the id) for repeated draws; seed 0 is
the published contract above.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

VAL_SHARE = 8  # one validation patient in eight, on average


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def fold_of(patient_id: str, k: int, seed: int = 0) -> int:
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    salt = f"{seed}:" if seed else ""
    return _h(salt + str(patient_id)) % k


def is_validation(patient_id: str, seed: int = 0) -> bool:
    salt = f"{seed}:" if seed else ""
    return _h(salt + "val:" + str(patient_id)) % VAL_SHARE == 0


@dataclass(frozen=True)
class Split:
    fold: int
    train: frozenset[str]
    validation: frozenset[str]
    test: frozenset[str]


def split(patients: Iterable[str], k: int, fold: int, seed: int = 0) -> Split:
    """Patients of `fold` are the test set; the rest divide into training and validation."""
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    train, val, test = set(), set(), set()
    for p in patients:
        if fold_of(p, k, seed) == fold:
            test.add(p)
        elif is_validation(p, seed):
            val.add(p)
        else:
            train.add(p)
    return Split(fold, frozenset(train), frozenset(val), frozenset(test))


def kfold(patients: Iterable[str], k: int, seed: int = 0) -> list[Split]:
    ids = list(patients)
    return [split(ids, k, f, seed) for f in range(k)]
