"""The student's input layout: how one patient's visits become fixed-shape integer arrays.

Training (`distill.data.tensors`), export and the app's runtime all fill arrays through
`fill_sample`, so a live visit on the device is laid out exactly as the training samples were.

Layout of one sample (V = `TensorConfig.max_visits`):

- visits are RIGHT-aligned: the current visit sits in slot V-1 and its history fills the slots
  just before it, oldest leftmost; a patient with more than V visits keeps the LAST V;
- "dx", "px", "med" hold each visit's code ids, 0-padded, cut to the per-visit cap (the first
  codes are kept: diagnoses come in seq order, primary first);
- the current visit's "med" row is all zeros: its drugs are what is predicted;
- "profile" holds the current visit's "field=value" tokens.

Every vocabulary maps `<pad>` to 0 and `<unk>` to 1; label index = medication id - 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = [
    "INPUT_NAMES",
    "LABEL_OFFSET",
    "OUTPUT_NAMES",
    "PAD_ID",
    "UNK_ID",
    "VOCAB_KINDS",
    "TensorConfig",
    "empty_inputs",
    "fill_sample",
    "profile_tokens",
]

# the positional order of the student's forward (and of the ONNX graph's inputs)
INPUT_NAMES = ("dx", "px", "med", "visit_mask", "profile")
OUTPUT_NAMES = ("logits", "features")
VOCAB_KINDS = ("diagnoses", "procedures", "medications", "profile")
PAD_ID, UNK_ID = 0, 1
LABEL_OFFSET = 2  # label index = medication id - 2 (after <pad>, <unk>)

# (diagnoses, procedures, medications) of one visit
VisitCodes = tuple[Sequence[str], Sequence[str], Sequence[str]]
# kind ("diagnoses", ...) and codes -> their ids, unknown codes as UNK_ID
Encode = Callable[[str, Sequence[str]], Sequence[int]]


@dataclass(frozen=True)
class TensorConfig:
    max_visits: int = 10
    max_diagnoses: int = 40
    max_procedures: int = 20
    max_medications: int = 40
    max_profile: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TensorConfig.{f.name} must be an integer >= 1; got {value!r}")


def profile_tokens(profile: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """("gender", "F") pairs (or a mapping) -> ["gender=F", ...], in the given order."""
    pairs = profile.items() if isinstance(profile, Mapping) else profile
    return [f"{k}={v}" for k, v in pairs]


def empty_inputs(n: int, cfg: TensorConfig) -> dict[str, np.ndarray]:
    """All-pad arrays for `n` samples, keys `INPUT_NAMES`."""
    v = cfg.max_visits
    return {
        "dx": np.zeros((n, v, cfg.max_diagnoses), dtype=np.int64),
        "px": np.zeros((n, v, cfg.max_procedures), dtype=np.int64),
        "med": np.zeros((n, v, cfg.max_medications), dtype=np.int64),
        "visit_mask": np.zeros((n, v), dtype=np.float32),
        "profile": np.zeros((n, cfg.max_profile), dtype=np.int64),
    }


def _put(row: np.ndarray, kind: str, codes: Sequence[str], encode: Encode) -> None:
    # cut before encoding: only codes that make it into the arrays count as unknown
    ids = encode(kind, list(codes)[: row.shape[0]])
    row[: len(ids)] = ids


def fill_sample(
    out: dict[str, np.ndarray],
    i: int,
    visits: Sequence[VisitCodes],
    profile: Sequence[str],
    encode: Encode,
) -> None:
    """Write sample `i` of `out`: `visits` oldest first, the last one current (its medications
    are not written); `profile` as `profile_tokens`."""
    v_max = out["visit_mask"].shape[1]
    kept = visits[-v_max:]
    start = v_max - len(kept)
    for j, (dx, px, med) in enumerate(kept):
        slot = start + j
        _put(out["dx"][i, slot], "diagnoses", dx, encode)
        _put(out["px"][i, slot], "procedures", px, encode)
        if slot != v_max - 1:
            _put(out["med"][i, slot], "medications", med, encode)
        out["visit_mask"][i, slot] = 1.0
    _put(out["profile"][i], "profile", profile, encode)
