"""The student's input layout: how one patient's visits become fixed-shape integer arrays.

Training (`distill.data.tensors`), export and the app's runtime all fill arrays through
`fill_sample`, so a live visit on the device is laid out exactly as the training samples were.

Layout of one sample (V = `TensorConfig.max_visits`):

- visits are RIGHT-aligned: the current visit sits in slot V-1 and its history fills the slots
  just before it, oldest leftmost; a patient with more than V visits keeps the LAST V;
- "dx", "px", "med" hold each visit's code ids, 0-padded, cut to the per-visit cap (the first
  codes are kept: diagnoses come in seq order, primary first);
- the current visit's "med" row is all zeros: its drugs are what is predicted;
- "profile" holds the current visit's "field=value" tokens;
- with `TensorConfig.ancestors` on, each dx/px row is twice the cap wide: the visit's (capped)
  codes first, then the ICD category of each of them (`code_ancestors`: icd9cm:42821 ->
  icd9cm:428, icd10cm:I5021 -> icd10cm:I50, icd9pcs:9671 -> icd9pcs:96, icd10pcs:02HV33Z ->
  icd10pcs:02H), each category once, only those the vocabulary knows and that are not already
  codes of the row. So a code the model never saw still moves the scores through its category;
  the code itself is reported unknown, a category never is;
- a code (or profile token) the vocabulary lacks is left out of its row, not written as <unk>:
  the vocabularies cover the whole cohort, so no training sample holds <unk> and its row never
  learnt anything (it would move the scores by noise). The caller counts and reports it.

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
    "code_ancestors",
    "empty_inputs",
    "expand_codes",
    "fill_sample",
    "profile_tokens",
    "row_widths",
]

# the positional order of the student's forward (and of the ONNX graph's inputs)
INPUT_NAMES = ("dx", "px", "med", "visit_mask", "profile")
OUTPUT_NAMES = ("logits", "features")
VOCAB_KINDS = ("diagnoses", "procedures", "medications", "profile")
PAD_ID, UNK_ID = 0, 1
LABEL_OFFSET = 2  # label index = medication id - 2 (after <pad>, <unk>)

# (diagnoses, procedures, medications) of one visit
VisitCodes = tuple[Sequence[str], Sequence[str], Sequence[str]]
# kind ("diagnoses", ...) and codes -> their ids, unknown codes as UNK_ID (left out by
# `fill_sample`)
Encode = Callable[[str, Sequence[str]], Sequence[int]]
# kind and one token -> its id, UNK_ID when unknown (counts nothing)
Lookup = Callable[[str, str], int]


# the fields every bundle's tensor_config has had since format 1; later ones may be missing
_FORMAT1_FIELDS = (
    "max_visits",
    "max_diagnoses",
    "max_procedures",
    "max_medications",
    "max_profile",
)


@dataclass(frozen=True)
class TensorConfig:
    max_visits: int = 10
    max_diagnoses: int = 40
    max_procedures: int = 20
    max_medications: int = 40
    max_profile: int = 8
    # the code hierarchy: each dx/px row also holds its codes' ICD categories (module docstring);
    # off by default so bundles and runs made before it keep their meaning
    ancestors: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" or f.type is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"TensorConfig.{f.name} must be true or false; got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TensorConfig.{f.name} must be an integer >= 1; got {value!r}")

    @classmethod
    def from_dict(cls, data: object, where: str = "tensor_config") -> TensorConfig:
        """Parse a saved config (a bundle manifest's `tensor_config`, a run's config.json):
        an object with every format-1 field; fields added later may be missing (their default,
        so old bundles keep their meaning); unknown fields are refused. ValueError names `where`.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in _FORMAT1_FIELDS if n not in data]
        extra = sorted(str(k) for k in set(data) - set(names))
        if missing or extra:
            raise ValueError(f"{where}: missing fields {missing}, unknown fields {extra}")
        try:
            return cls(**{n: data[n] for n in names if n in data})
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


# ICD code systems (the records' prefixes) -> length of the category part of a code
def _category_length(system: str, body: str) -> int | None:
    if system == "icd9cm":
        return 4 if body[:1] == "E" else 3  # E + 3 digits, V + 2 digits, else 3 digits
    if system in ("icd10cm", "icd10pcs"):
        return 3  # ICD-10-CM category; ICD-10-PCS section + body system + root operation
    if system == "icd9pcs":
        return 2
    return None


def code_ancestors(code: str) -> tuple[str, ...]:
    """The coarser ICD codes that contain `code`, nearest first: today its category.

    icd9cm:42821 -> (icd9cm:428,), icd9cm:V1582 -> (icd9cm:V15,), icd9cm:E8781 ->
    (icd9cm:E878,), icd10cm:I5021 -> (icd10cm:I50,), icd9pcs:9671 -> (icd9pcs:96,),
    icd10pcs:02HV33Z -> (icd10pcs:02H,). A code that is its own category (icd9cm:311,
    icd10cm:I10) or of another system (ATC, profile tokens) has none.
    """
    system, sep, body = code.partition(":")
    if not sep or not body:
        return ()
    n = _category_length(system, body)
    if n is None or len(body) <= n:
        return ()
    return (f"{system}:{body[:n]}",)


def expand_codes(codes: Sequence[str]) -> list[str]:
    """The distinct ancestors of `codes` that are not among `codes`, first seen first."""
    given = set(codes)
    out: dict[str, None] = {}
    for c in codes:
        for a in code_ancestors(c):
            if a not in given:
                out.setdefault(a, None)
    return list(out)


def profile_tokens(profile: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """("gender", "F") pairs (or a mapping) -> ["gender=F", ...], in the given order."""
    pairs = profile.items() if isinstance(profile, Mapping) else profile
    return [f"{k}={v}" for k, v in pairs]


def row_widths(cfg: TensorConfig) -> dict[str, int]:
    """Width of each visit row: the per-visit cap, doubled for dx/px with `ancestors` on
    (room for one category per kept code)."""
    wide = 2 if cfg.ancestors else 1
    return {
        "dx": cfg.max_diagnoses * wide,
        "px": cfg.max_procedures * wide,
        "med": cfg.max_medications,
    }


def empty_inputs(n: int, cfg: TensorConfig) -> dict[str, np.ndarray]:
    """All-pad arrays for `n` samples, keys `INPUT_NAMES`."""
    v = cfg.max_visits
    w = row_widths(cfg)
    return {
        "dx": np.zeros((n, v, w["dx"]), dtype=np.int64),
        "px": np.zeros((n, v, w["px"]), dtype=np.int64),
        "med": np.zeros((n, v, w["med"]), dtype=np.int64),
        "visit_mask": np.zeros((n, v), dtype=np.float32),
        "profile": np.zeros((n, cfg.max_profile), dtype=np.int64),
    }


def _put(
    row: np.ndarray,
    kind: str,
    codes: Sequence[str],
    encode: Encode,
    lookup: Lookup | None = None,
) -> None:
    # cut before encoding: only codes that make it into the arrays count as unknown
    cap = row.shape[0] // 2 if lookup is not None else row.shape[0]
    kept = list(codes)[:cap]
    # an unknown code is left out, not written as <unk>: no training sample holds <unk> (the
    # vocabularies cover the whole cohort), so its row never learnt anything and would move
    # the scores by noise; the caller reports the code
    ids = [i for i in encode(kind, kept) if i != UNK_ID]
    if lookup is not None:
        # categories the vocabulary knows; an unknown one adds nothing (its child is <unk>)
        ids += [i for i in (lookup(kind, a) for a in expand_codes(kept)) if i > UNK_ID]
    row[: len(ids)] = ids


def fill_sample(
    out: dict[str, np.ndarray],
    i: int,
    visits: Sequence[VisitCodes],
    profile: Sequence[str],
    encode: Encode,
    ancestors: Lookup | None = None,
) -> None:
    """Write sample `i` of `out`: `visits` oldest first, the last one current (its medications
    are not written); `profile` as `profile_tokens`.

    `ancestors`: None, or the vocabulary lookup (kind, token) -> id (UNK_ID when unknown; it
    counts nothing) when `TensorConfig.ancestors` is on: dx/px rows (`empty_inputs` made them
    twice the cap wide) then get their codes' known categories after the codes.
    """
    v_max = out["visit_mask"].shape[1]
    kept = visits[-v_max:]
    start = v_max - len(kept)
    for j, (dx, px, med) in enumerate(kept):
        slot = start + j
        _put(out["dx"][i, slot], "diagnoses", dx, encode, ancestors)
        _put(out["px"][i, slot], "procedures", px, encode, ancestors)
        if slot != v_max - 1:
            _put(out["med"][i, slot], "medications", med, encode)
        out["visit_mask"][i, slot] = 1.0
    _put(out["profile"][i], "profile", profile, encode)
