"""Medication samples as fixed-shape integer arrays: what the student model reads.

The layout itself (right-aligned visits, per-visit caps, the current visit's medications left
out, profile tokens; `INPUT_NAMES`, `TensorConfig`) is `contract.layout`'s, shared with the app's
runtime; this module adds the training side: `MedVocabs` over a cohort, `encode_samples` with
"y", the multi-hot of the target's medications over `MedVocabs.labels`, and `encode_visit`.

numpy only: the app encodes live visits the same way without importing torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.layout import (
    LABEL_OFFSET,
    VOCAB_KINDS,
    TensorConfig,
    empty_inputs,
    expand_codes,
    fill_sample,
    profile_tokens,
)
from distill.data.records import Visit
from distill.data.samples import MedSample
from distill.data.vocab import Vocab


@dataclass(frozen=True)
class MedVocabs:
    diagnoses: Vocab
    procedures: Vocab
    medications: Vocab
    profile: Vocab

    @classmethod
    def build(cls, visits: Iterable[Visit], ancestors: bool = False) -> MedVocabs:
        """Vocabularies over every visit given (normally all visits of a cohort).

        `ancestors` (as `TensorConfig.ancestors`): the diagnosis and procedure vocabularies also
        hold the ICD categories of the codes (`contract.layout.code_ancestors`), counted once
        per visit row they appear in, as the arrays will hold them.
        """
        dx: Counter = Counter()
        px: Counter = Counter()
        med: Counter = Counter()
        prof: Counter = Counter()
        for v in visits:
            dx.update(v.diagnoses)
            px.update(v.procedures)
            if ancestors:
                dx.update(expand_codes(v.diagnoses))
                px.update(expand_codes(v.procedures))
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
        return {k: len(getattr(self, k)) for k in VOCAB_KINDS}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for k in VOCAB_KINDS:
            getattr(self, k).save(folder / f"{k}.json")

    @classmethod
    def load(cls, folder: Path) -> MedVocabs:
        folder = Path(folder)
        return cls(**{k: Vocab.load(folder / f"{k}.json") for k in VOCAB_KINDS})


def _encoder(vocabs: MedVocabs, unknown: Counter | None):
    """The `fill_sample` lookup: (kind, codes) -> ids in that kind's vocabulary, unknowns
    counted in `unknown`."""
    return lambda kind, codes: getattr(vocabs, kind).encode(codes, unknown)


def _ancestor_lookup(vocabs: MedVocabs, cfg: TensorConfig):
    """`fill_sample`'s `ancestors`: (kind, token) -> id, counting nothing; None when off."""
    if not cfg.ancestors:
        return None
    return lambda kind, token: getattr(vocabs, kind).id(token)


def encode_samples(
    samples: Sequence[MedSample],
    vocabs: MedVocabs,
    cfg: TensorConfig,
    unknown: Counter | None = None,
) -> dict[str, np.ndarray]:
    """Arrays for `samples` (keys `INPUT_NAMES` + "y"); unknown codes are left out, counted."""
    n = len(samples)
    out = empty_inputs(n, cfg)
    y = np.zeros((n, len(vocabs.labels)), dtype=np.float32)
    for i, s in enumerate(samples):
        visits = [(v.diagnoses, v.procedures, v.medications) for v in (*s.history, s.target)]
        # the target's medications are left out of the history (they are the answer)
        visits[-1] = (s.target.diagnoses, s.target.procedures, ())
        fill_sample(
            out,
            i,
            visits,
            profile_tokens(s.target.profile),
            _encoder(vocabs, unknown),
            _ancestor_lookup(vocabs, cfg),
        )
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
    out = empty_inputs(1, cfg)
    visits = [*((tuple(d), tuple(p), tuple(m)) for d, p, m in history)]
    visits.append((tuple(diagnoses), tuple(procedures), ()))
    fill_sample(
        out,
        0,
        visits,
        profile_tokens(profile),
        _encoder(vocabs, unknown),
        _ancestor_lookup(vocabs, cfg),
    )
    return out
