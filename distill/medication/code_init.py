"""Code embeddings initialised from the teacher's reading of the code titles.

One hundred patients cannot teach the student that "Acute systolic heart failure" and
"Congestive heart failure, unspecified" are neighbours, or what a drug class is for; the
teacher's language model can. This module writes one short text per row of the student's
shared embedding table ([diagnoses | procedures | medications | profile], as
`LeaderStudent.embed`), reads each with the FROZEN teacher backbone (pooled hidden state, the
same pooling as the teacher's features), projects the states to the student's width with PCA,
and scales them to the spread of the table's default initialisation. Label-free: it reads only
code titles, so it is computed once for all folds without leaking any patient's labels.

Usage (in a run, before training each fold's student):

    table = code_title_table(vocabs, TeacherConfig(backbone="smollm2"), dim=cfg.dim,
                             titles=cohort.titles)
    init_student_embeddings(model, table)      # model: a fresh LeaderStudent

`<pad>` and `<unk>` rows stay as the model initialised them (pad is masked anyway).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from contract.layout import VOCAB_KINDS, code_ancestors
from distill.data.codes import atc_names, icd_titles

__all__ = [
    "code_text",
    "code_texts",
    "code_title_table",
    "init_student_embeddings",
    "pca_project",
    "title_states",
]

_KIND_WORD = {
    "diagnoses": "Diagnosis",
    "procedures": "Procedure",
    "medications": "Drug class",
    "profile": "Patient",
}


@lru_cache(maxsize=1)
def _members() -> dict[str, list[str]]:
    """ICD category -> its member codes in the shipped dictionary, sorted."""
    out: dict[str, list[str]] = {}
    for code in sorted(icd_titles()):
        for a in code_ancestors(code):
            out.setdefault(a, []).append(code)
    return out


def _category_title(code: str) -> str | None:
    """A title for an ICD category the dictionary lists no title for (icd9cm:428): its first
    two member codes' titles, e.g. "Congestive heart failure, unspecified; Left heart failure"."""
    titles = icd_titles()
    return "; ".join(titles[c] for c in _members().get(code, [])[:2]) or None


def code_text(kind: str, token: str, titles: Mapping[str, str] | None = None) -> str:
    """The text the teacher reads for one vocabulary token of `kind`.

    `titles` (e.g. the cohort's own titles) first, then the shipped ICD and ATC dictionaries;
    an ICD category without a title of its own is described by its member codes; profile
    tokens "age_band=60-69" read "Patient age band: 60-69"; unknown codes read as themselves.
    """
    word = _KIND_WORD[kind]
    if titles and token in titles:
        return f"{word}: {titles[token]}"
    if kind == "profile":
        field, _, value = token.partition("=")
        return f"{word} {field.replace('_', ' ')}: {value}"
    if kind == "medications":
        return f"{word}: {atc_names().get(token, token)}"
    title = icd_titles().get(token) or _category_title(token)
    return f"{word}: {title or token}"


def code_texts(vocabs: Any, titles: Mapping[str, str] | None = None) -> list[str]:
    """One text per row of the student's shared table, kinds in `VOCAB_KINDS` order (the
    table's order); `<pad>` and `<unk>` rows get "" (they are not read)."""
    out = []
    for kind in VOCAB_KINDS:
        for i, token in enumerate(getattr(vocabs, kind).tokens):
            out.append("" if i < 2 else code_text(kind, token, titles))
    return out


def title_states(texts: Sequence[str], teacher: Any, batch_size: int = 64) -> np.ndarray:
    """Pooled hidden states [len(texts), hidden] of the frozen backbone of `teacher` (a
    `TeacherConfig`); empty texts give zero rows."""
    from distill.features import FrozenEncoder, pooled_features

    model = FrozenEncoder.from_config(teacher)
    keep = [i for i, t in enumerate(texts) if t]
    states = np.zeros((len(texts), model.hidden_size), dtype=np.float32)
    if keep:
        states[keep] = pooled_features(model, model.tokenizer, [texts[i] for i in keep], batch_size)
    return states


def pca_project(states: np.ndarray, dim: int, rows: np.ndarray | None = None,
                scale: float = 1.0) -> np.ndarray:  # fmt: skip
    """`states` [N, H] -> [N, dim]: centred on `rows` (a boolean mask of the rows to fit on,
    default all), projected on their top `dim` principal directions, and scaled so those rows'
    entries have standard deviation `scale` (nn.Embedding initialises N(0, 1)). With fewer
    directions than `dim` the remaining columns are zero. Rows outside `rows` come back zero."""
    states = np.asarray(states, dtype=np.float64)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")
    rows = np.ones(len(states), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    fit = states[rows]
    out = np.zeros((len(states), dim), dtype=np.float32)
    if len(fit) < 2:
        return out
    centred = fit - fit.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(dim, vt.shape[0])
    proj = centred @ vt[:k].T
    std = proj.std()
    if std > 0:
        proj *= scale / std
    out[np.flatnonzero(rows), :k] = proj.astype(np.float32)
    return out


def code_title_table(
    vocabs: Any,
    teacher: Any,
    dim: int,
    titles: Mapping[str, str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """[table rows, dim] initial embeddings for `LeaderStudent.embed`, from the titles read by
    the frozen `teacher` backbone (see the module docstring); zero rows for `<pad>`/`<unk>`."""
    texts = code_texts(vocabs, titles)
    states = title_states(texts, teacher, batch_size)
    return pca_project(states, dim, rows=np.array([bool(t) for t in texts]))


def init_student_embeddings(model: Any, table: np.ndarray) -> None:
    """Copy `table` into `model.embed` (a LeaderStudent's shared table), leaving each kind's
    `<pad>` and `<unk>` rows as they were; ValueError on a shape mismatch."""
    import torch

    weight = model.embed.weight
    if tuple(table.shape) != tuple(weight.shape):
        raise ValueError(
            f"title table is {tuple(table.shape)}, the student's embedding {tuple(weight.shape)}"
        )
    c = model.config
    specials = []
    for offset in (0, c.n_diagnoses, c.n_diagnoses + c.n_procedures,
                   c.n_diagnoses + c.n_procedures + c.n_medications):  # fmt: skip
        specials += [offset, offset + 1]
    keep = torch.ones(weight.shape[0], dtype=torch.bool)
    keep[specials] = False
    with torch.no_grad():
        src = torch.as_tensor(table, dtype=weight.dtype, device=weight.device)
        weight[keep] = src[keep]
