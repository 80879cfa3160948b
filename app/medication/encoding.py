"""One live visit as the student's input arrays, laid out exactly as training laid its samples
out (`contract.layout.fill_sample`), and the padding a batch can lose without changing a score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from app.medication.bundle import Bundle
from contract.layout import PAD_ID, UNK_ID, empty_inputs, fill_sample, profile_tokens

__all__ = ["code_list", "encode_visit", "trim_padding", "visit_read"]


def code_list(codes: Any, what: str) -> list[str]:
    """`codes` as a list; a single string is refused (it is not a list of codes)."""
    if isinstance(codes, str | bytes):
        raise TypeError(f"{what} must be a sequence of codes, not a single string: {codes!r}")
    return list(codes)


def _history_visit(visit: Any) -> tuple[list[str], list[str], list[str]]:
    if isinstance(visit, Mapping):
        parts = (visit.get(k, ()) for k in ("diagnoses", "procedures", "medications"))
    else:
        parts = tuple(visit)
        if len(parts) != 3:
            raise TypeError("a history visit is (diagnoses, procedures, medications)")
    dx, px, med = parts
    return (
        code_list(dx, "history diagnoses"),
        code_list(px, "history procedures"),
        code_list(med, "history medications"),
    )


def trim_padding(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the all-pad leading visit slots and the all-pad trailing code columns of a batch.

    The student is exactly invariant to such padding (slots are indexed by distance from the
    current visit; pads are masked), so this changes no output, only the work: most patients
    have far fewer than `max_visits` visits and codes than the caps.
    """
    mask = inputs["visit_mask"]
    used = np.flatnonzero(mask.any(axis=0))
    first = int(used[0]) if used.size else mask.shape[1] - 1
    out = {"visit_mask": mask[:, first:], "profile": inputs["profile"]}
    for name in ("dx", "px", "med"):
        ids = inputs[name][:, first:]
        cols = np.flatnonzero((ids != PAD_ID).any(axis=(0, 1)))
        width = int(cols[-1]) + 1 if cols.size else 1
        out[name] = np.ascontiguousarray(ids[:, :, :width])
    cols = np.flatnonzero((inputs["profile"] != PAD_ID).any(axis=0))
    out["profile"] = np.ascontiguousarray(
        inputs["profile"][:, : int(cols[-1]) + 1 if cols.size else 1]
    )
    out["visit_mask"] = np.ascontiguousarray(out["visit_mask"])
    return out


def encode_visit(
    bundle: Bundle,
    diagnoses: Sequence[str],
    procedures: Sequence[str],
    history: Sequence[Any] = (),
    profile: Mapping[str, str] | Iterable[tuple[str, str]] = (),
) -> tuple[dict[str, np.ndarray], list[str]]:
    """One live visit as a batch of 1 (keys `INPUT_NAMES`) and the codes the model does not know.

    `history` holds the earlier visits, oldest first, as (diagnoses, procedures, medications)
    (or mappings with those keys); `profile` is (field, value) pairs or a mapping. Layout as in
    `contract.layout`: visits right-aligned with the current one last, only the last
    `max_visits` kept, the first `max_*` codes of each visit kept, the current visit's medication
    row empty; with `tensor_config.ancestors` each code's known ICD category follows the codes.
    Unknown codes (and profile tokens) are left out of the arrays and returned once each, in
    order seen (only codes within the caps; one whose category is known is still returned: the
    model reads it only through the category).
    """
    visits = [_history_visit(h) for h in history]
    visits.append((code_list(diagnoses, "diagnoses"), code_list(procedures, "procedures"), []))
    unknown: dict[str, None] = {}
    vocabs = bundle.vocabs

    def encode(kind: str, codes: Sequence[str]) -> list[int]:
        vocab = vocabs[kind]
        ids = []
        for code in codes:
            i = vocab.get(code, UNK_ID)
            if i == UNK_ID:
                unknown.setdefault(code, None)
            ids.append(i)
        return ids

    def lookup(kind: str, token: str) -> int:
        return vocabs[kind].get(token, UNK_ID)

    cfg = bundle.tensor_config
    out = empty_inputs(1, cfg)
    ancestors = lookup if cfg.ancestors else None
    fill_sample(out, 0, visits, profile_tokens(profile), encode, ancestors)
    return out, list(unknown)


def visit_read(inputs: Mapping[str, np.ndarray]) -> bool:
    """Whether the model reads anything of the current visit of a batch-of-1 `inputs` (its
    last slot): a known code, or the known category of an unknown one."""
    return bool(inputs["dx"][0, -1].any() or inputs["px"][0, -1].any())
