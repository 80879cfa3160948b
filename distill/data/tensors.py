"""Medication samples as fixed-shape integer arrays: what the student model reads.

Layout of one sample (V = `TensorConfig.max_visits`):

- visits are RIGHT-aligned: the current (target) visit sits in slot V-1 and its history fills the
  slots just before it, oldest leftmost; a patient with more than V visits keeps the LAST V;
- "dx", "px", "med" hold each visit's code ids, 0-padded, cut to the per-visit cap (the first
  codes are kept: diagnoses come in seq order, primary first);
- the current visit's "med" row is all zeros: its drugs are the answer, in "y";
- "profile" holds the target visit's "field=value" tokens;
- "y" is the multi-hot of the target's medications over `MedVocabs.labels`.

numpy only: the app encodes live visits with `encode_visit` without importing torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from distill.data.records import Visit
from distill.data.samples import MedSample
from distill.data.vocab import Vocab

# the positional order of the student's forward (and of the ONNX graph's inputs)
INPUT_NAMES = ("dx", "px", "med", "visit_mask", "profile")
LABEL_OFFSET = 2  # label index = medication id - 2 (after <pad>, <unk>)

_KINDS = ("diagnoses", "procedures", "medications", "profile")


def profile_tokens(profile: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """("gender", "F") pairs (or a mapping) -> ["gender=F", ...], in the given order."""
    pairs = profile.items() if isinstance(profile, Mapping) else profile
    return [f"{k}={v}" for k, v in pairs]


@dataclass(frozen=True)
class MedVocabs:
    diagnoses: Vocab
    procedures: Vocab
    medications: Vocab
    profile: Vocab

    @classmethod
    def build(cls, visits: Iterable[Visit]) -> MedVocabs:
        """Vocabularies over every visit given (normally all visits of a cohort)."""
        dx: Counter = Counter()
        px: Counter = Counter()
        med: Counter = Counter()
        prof: Counter = Counter()
        for v in visits:
            dx.update(v.diagnoses)
            px.update(v.procedures)
            med.update(v.medications)
            prof.update(profile_tokens(v.profile))
        return cls(
            diagnoses=Vocab.build(dx.elements()),
            procedures=Vocab.build(px.elements()),
            medications=Vocab.build(med.elements()),
            profile=Vocab.build(prof.elements()),
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """The ATC3 codes the model predicts; label index = medication id - 2."""
        return self.medications.tokens[LABEL_OFFSET:]

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in _KINDS}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for k in _KINDS:
            getattr(self, k).save(folder / f"{k}.json")

    @classmethod
    def load(cls, folder: Path) -> MedVocabs:
        folder = Path(folder)
        return cls(**{k: Vocab.load(folder / f"{k}.json") for k in _KINDS})


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


def _empty(n: int, cfg: TensorConfig) -> dict[str, np.ndarray]:
    v = cfg.max_visits
    return {
        "dx": np.zeros((n, v, cfg.max_diagnoses), dtype=np.int64),
        "px": np.zeros((n, v, cfg.max_procedures), dtype=np.int64),
        "med": np.zeros((n, v, cfg.max_medications), dtype=np.int64),
        "visit_mask": np.zeros((n, v), dtype=np.float32),
        "profile": np.zeros((n, cfg.max_profile), dtype=np.int64),
    }


def _put(row: np.ndarray, vocab: Vocab, codes: Sequence[str], unknown: Counter | None) -> None:
    ids = vocab.encode(list(codes)[: row.shape[0]], unknown)
    row[: len(ids)] = ids


def _fill(
    out: dict[str, np.ndarray],
    i: int,
    visits: Sequence[tuple[Sequence[str], Sequence[str], Sequence[str]]],
    profile: Sequence[str],
    vocabs: MedVocabs,
    unknown: Counter | None,
) -> None:
    """Write sample `i`: `visits` oldest first, the last one current (its medications unused)."""
    v_max = out["visit_mask"].shape[1]
    kept = visits[-v_max:]
    start = v_max - len(kept)
    for j, (dx, px, med) in enumerate(kept):
        slot = start + j
        _put(out["dx"][i, slot], vocabs.diagnoses, dx, unknown)
        _put(out["px"][i, slot], vocabs.procedures, px, unknown)
        if slot != v_max - 1:
            _put(out["med"][i, slot], vocabs.medications, med, unknown)
        out["visit_mask"][i, slot] = 1.0
    _put(out["profile"][i], vocabs.profile, profile, unknown)


def encode_samples(
    samples: Sequence[MedSample],
    vocabs: MedVocabs,
    cfg: TensorConfig,
    unknown: Counter | None = None,
) -> dict[str, np.ndarray]:
    """Arrays for `samples` (keys `INPUT_NAMES` + "y"); unknown codes become <unk>, counted."""
    n = len(samples)
    out = _empty(n, cfg)
    y = np.zeros((n, len(vocabs.labels)), dtype=np.float32)
    for i, s in enumerate(samples):
        visits = [(v.diagnoses, v.procedures, v.medications) for v in (*s.history, s.target)]
        # the target's medications are left out of the history (they are the answer)
        visits[-1] = (s.target.diagnoses, s.target.procedures, ())
        _fill(out, i, visits, profile_tokens(s.target.profile), vocabs, unknown)
        for med_id in vocabs.medications.encode(s.target.medications, unknown):
            if med_id >= LABEL_OFFSET:
                y[i, med_id - LABEL_OFFSET] = 1.0
    out["y"] = y
    return out


def encode_visit(
    diagnoses: Sequence[str],
    procedures: Sequence[str],
    history: Sequence[tuple[Sequence[str], Sequence[str], Sequence[str]]],
    profile: Mapping[str, str] | Iterable[tuple[str, str]],
    vocabs: MedVocabs,
    cfg: TensorConfig,
    unknown: Counter | None = None,
) -> dict[str, np.ndarray]:
    """One live visit as a batch of 1 (keys `INPUT_NAMES`, no "y").

    `history` is the patient's earlier visits as (diagnoses, procedures, medications), oldest
    first; `profile` is (field, value) pairs or a mapping.
    """
    out = _empty(1, cfg)
    visits = [*((tuple(d), tuple(p), tuple(m)) for d, p, m in history)]
    visits.append((tuple(diagnoses), tuple(procedures), ()))
    _fill(out, 0, visits, profile_tokens(profile), vocabs, unknown)
    return out
