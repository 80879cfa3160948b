"""What a medication run keeps for its export, as files in the run folder.

The export reads only the run folder (never the cohort, never a dataset's name, never a
re-split), so the run writes down everything the int8 evaluation, the parity checks and the
bundle are made from:

    fold<k>/heldout.npz           the fold's validation then test samples as the student's
                                  input arrays (`INPUT_NAMES`) with "y", plus "sample_id" and
                                  "n_validation" (the first n rows are validation)
    fold<k>/trained_ids.json      the diagnosis and procedure ids that occur anywhere in the
                                  samples the fold's students trained on (the rows they learnt;
                                  the export keeps only these in the bundle's vocabulary)
    bundle_inputs/labels.json     the drug classes: [{"code", "name"}] in label order
    bundle_inputs/ddi.json        the DDI pairs among those classes: [[a, b], ...], sorted
    bundle_inputs/titles.json     a title for every diagnosis and procedure code of the vocab

Thresholds chosen on validation are in ``fold<k>/metrics.json``, the vocabularies in
``vocab/``, the students in ``fold<k>/student_kd.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.files import atomic_path, atomic_write_json
from contract.layout import INPUT_NAMES
from distill.data import codes
from distill.data.tensors import MedVocabs

__all__ = [
    "DDI_FILE",
    "HELDOUT_FILE",
    "LABELS_FILE",
    "TITLES_FILE",
    "BundleInputs",
    "Heldout",
    "read_bundle_inputs",
    "read_heldout",
    "read_trained_ids",
    "write_bundle_inputs",
    "write_heldout",
    "write_trained_ids",
]

HELDOUT_FILE = "heldout.npz"
TRAINED_IDS_FILE = "trained_ids.json"
TRAINED_KINDS = {"dx": "diagnoses", "px": "procedures"}  # array name -> vocabulary
LABELS_FILE = "bundle_inputs/labels.json"
DDI_FILE = "bundle_inputs/ddi.json"
TITLES_FILE = "bundle_inputs/titles.json"
ARRAY_NAMES = (*INPUT_NAMES, "y")


@dataclass
class Heldout:
    """One fold's held-out samples: validation rows first, then test rows."""

    arrays: dict[str, np.ndarray]  # `ARRAY_NAMES` -> [n_validation + n_test, ...]
    sample_ids: list[str]
    n_validation: int

    @property
    def test(self) -> dict[str, np.ndarray]:
        return {k: v[self.n_validation :] for k, v in self.arrays.items()}


@dataclass
class BundleInputs:
    labels: list[dict[str, str]]  # [{"code", "name"}] in label order
    ddi: list[list[str]]  # [[a, b]] among the labels, sorted
    titles: dict[str, str]  # diagnosis/procedure code -> title

    def ddi_label_pairs(self) -> list[tuple[int, int]]:
        """The DDI pairs as label indices (as `distill.medication.evaluate.ddi_label_pairs`)."""
        index = {row["code"]: i for i, row in enumerate(self.labels)}
        return [(index[a], index[b]) for a, b in self.ddi]


def write_heldout(
    fold_dir: Path,
    arrays: Mapping[str, np.ndarray],
    validation: np.ndarray,
    test: np.ndarray,
    sample_ids: Sequence[str],
) -> Path:
    """Write the fold's validation and test rows of `arrays` to ``fold_dir/heldout.npz``."""
    rows = np.concatenate([validation, test])
    data = {k: arrays[k][rows] for k in ARRAY_NAMES}
    data["sample_id"] = np.array([str(sample_ids[i]) for i in rows], dtype=np.str_)
    data["n_validation"] = np.array(len(validation), dtype=np.int64)
    path = Path(fold_dir) / HELDOUT_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **data)
    return path


def write_trained_ids(fold_dir: Path, arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> Path:
    """Write ``fold_dir/trained_ids.json``: {vocabulary: sorted ids} of the diagnosis and
    procedure ids found in `rows` of `arrays` (any visit slot; pads left out). Label-free."""
    out = {}
    for name, kind in TRAINED_KINDS.items():
        ids = np.unique(np.asarray(arrays[name])[rows])
        out[kind] = [int(i) for i in ids if i > 1]  # <pad> and <unk> are always kept
    path = Path(fold_dir) / TRAINED_IDS_FILE
    atomic_write_json(path, out)
    return path


def read_trained_ids(fold_dir: Path) -> dict[str, list[int]] | None:
    """The fold's `write_trained_ids` record, or None for a run made before it existed."""
    path = Path(fold_dir) / TRAINED_IDS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    for kind in TRAINED_KINDS.values():
        ids = data.get(kind)
        if not isinstance(ids, list) or not all(isinstance(i, int) and i > 1 for i in ids):
            raise ValueError(f"{path}: {kind} must be a list of ids > 1")
    return {kind: data[kind] for kind in TRAINED_KINDS.values()}


def read_heldout(fold_dir: Path) -> Heldout:
    path = Path(fold_dir) / HELDOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a run from before held-out files were kept?)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in (*ARRAY_NAMES, "sample_id", "n_validation") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: lacks {missing}")
        arrays = {k: z[k] for k in ARRAY_NAMES}
        return Heldout(arrays, [str(s) for s in z["sample_id"]], int(z["n_validation"]))


def write_bundle_inputs(
    out: Path, vocabs: MedVocabs, cohort_titles: Mapping[str, str] | None
) -> None:
    """Labels with their names, the DDI pairs among them and the vocabulary's code titles
    (the cohort's own dictionaries first, then the packaged tables)."""
    labels = list(vocabs.labels)
    index = set(labels)
    atomic_write_json(out / LABELS_FILE, [{"code": c, "name": codes.title(c)} for c in labels])
    atomic_write_json(
        out / DDI_FILE,
        [[a, b] for a, b in sorted(codes.ddi_pairs()) if a in index and b in index],
    )
    titles = {
        c: codes.title(c, cohort_titles)
        for vocab in (vocabs.diagnoses, vocabs.procedures)
        for c in vocab.tokens[2:]
    }
    atomic_write_json(out / TITLES_FILE, titles)


def read_bundle_inputs(run: Path) -> BundleInputs:
    def load(name: str):
        path = Path(run) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a run from before bundle inputs were kept?)")
        return json.loads(path.read_text(encoding="utf-8"))

    return BundleInputs(load(LABELS_FILE), load(DDI_FILE), load(TITLES_FILE))
