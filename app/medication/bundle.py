"""A medication bundle, verified and parsed: what the recommender needs from the folder.

`load_bundle(path)` checks the manifest (known format, every listed file present with the right
sha256, every required file listed: `contract.bundle`) before it parses anything, then reads
the vocabularies, labels, DDI pairs and titles and checks them against the student's shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.bundle import (
    DDI_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    TITLES_FILE,
    VOCAB_FILE,
    BundleError,
    plain_name,
    read_json,
    read_manifest,
    verify_files,
)
from contract.layout import (
    INPUT_NAMES,
    LABEL_OFFSET,
    OUTPUT_NAMES,
    PAD_ID,
    UNK_ID,
    VOCAB_KINDS,
    TensorConfig,
)

DOMAIN = "medication"
PAD, UNK = "<pad>", "<unk>"

__all__ = ["DOMAIN", "Bundle", "StudentShape", "load_bundle"]


def _tensor_config(data: Any, where: str) -> TensorConfig:
    """The manifest's input array sizes (`contract.layout.TensorConfig.from_dict`: every format-1
    field given, later fields may be missing and take their defaults)."""
    try:
        return TensorConfig.from_dict(data, where)
    except (TypeError, ValueError) as e:
        raise BundleError(str(e)) from None


@dataclass(frozen=True)
class StudentShape:
    """The `StudentConfig` fields the runtime needs to rebuild the network.

    `repeat_head=None` means "not stated": `NumpyBackend` then follows the weights file.
    """

    n_diagnoses: int
    n_procedures: int
    n_medications: int
    n_profile: int
    n_labels: int
    dim: int = 64
    heads: int = 4
    visit_layers: int = 2
    max_visits: int = 10
    repeat_head: bool | None = None
    # how the wide path reads the current visit's codes (StudentConfig.wide_codes): "sum" of
    # their rows (bundles made before the field), or that sum times (wide_codes_scale / n)
    # to the power 1/2 ("sqrt") or 1 ("mean")
    wide_codes: str = "sum"
    wide_codes_scale: float = 1.0

    @classmethod
    def from_dict(cls, data: Any, where: str = "student_config") -> StudentShape:
        if isinstance(data, StudentShape):
            return data
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: expected an object, got {type(data).__name__}")
        required = ("n_diagnoses", "n_procedures", "n_medications", "n_profile", "n_labels")
        missing = [n for n in required if n not in data]
        if missing:
            raise BundleError(f"{where}: missing fields {missing}")
        values: dict[str, Any] = {}
        for n in (*required, "dim", "heads", "visit_layers", "max_visits"):
            if n in data:
                values[n] = _positive_int(data[n], f"{where}.{n}")
        for n in ("n_diagnoses", "n_procedures", "n_medications", "n_profile"):
            if values[n] < 2:
                raise BundleError(f"{where}.{n} must be >= 2 (<pad> and <unk>); got {values[n]}")
        if "repeat_head" in data:
            if not isinstance(data["repeat_head"], bool):
                raise BundleError(f"{where}.repeat_head must be true or false")
            values["repeat_head"] = data["repeat_head"]
        if "wide_codes" in data:
            if data["wide_codes"] not in ("sum", "sqrt", "mean"):
                raise BundleError(f"{where}.wide_codes must be 'sum', 'sqrt' or 'mean'; got "
                                  f"{data['wide_codes']!r}")  # fmt: skip
            values["wide_codes"] = data["wide_codes"]
        if "wide_codes_scale" in data:
            scale = data["wide_codes_scale"]
            if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
                raise BundleError(f"{where}.wide_codes_scale must be a number > 0; got {scale!r}")
            values["wide_codes_scale"] = float(scale)
        shape = cls(**values)
        if shape.dim % shape.heads:
            raise BundleError(f"{where}: dim {shape.dim} is not divisible by heads {shape.heads}")
        return shape


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{where} must be an integer >= 1; got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# the bundle


@dataclass(frozen=True)
class Bundle:
    """A verified, parsed bundle. Build it with `load_bundle`."""

    path: Path
    manifest: dict
    vocabs: dict[str, dict[str, int]]  # kind -> token -> id
    label_codes: tuple[str, ...]  # label i = medication id i + 2
    label_names: tuple[str, ...]
    ddi: frozenset[frozenset[str]]  # undirected ATC3 pairs
    titles: dict[str, str]  # "icd9cm:4019" -> title
    threshold: float
    student_config: StudentShape
    tensor_config: TensorConfig
    model_path: Path
    weights_path: Path
    label_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_index", {c: i for i, c in enumerate(self.label_codes)})

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def labels(self) -> list[dict[str, str]]:
        return [
            {"code": c, "name": n} for c, n in zip(self.label_codes, self.label_names, strict=True)
        ]

    def label_name(self, code: str) -> str:
        i = self.label_index.get(code)
        return self.label_names[i] if i is not None else code

    def interacts(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.ddi


def _required_files(manifest: dict) -> dict[str, str]:
    """Role -> file name of every file the runtime needs."""
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise BundleError(f"{MANIFEST_FILE}: 'model' must be an object")
    roles = {
        "model": model.get("file"),
        "numpy weights": manifest.get("numpy_weights"),
        "vocabulary": VOCAB_FILE,
        "labels": LABELS_FILE,
        "DDI pairs": DDI_FILE,
        "titles": TITLES_FILE,
    }
    for role, name in roles.items():
        if not plain_name(name):
            raise BundleError(f"{MANIFEST_FILE}: the {role} file name {name!r} is not a plain name")
    return roles


def _verify_files(folder: Path, manifest: dict) -> dict[str, str]:
    roles = verify_files(folder, manifest, _required_files(manifest))
    vocab_digest = manifest.get("vocab_sha256")
    if (
        not isinstance(vocab_digest, str)
        or vocab_digest.lower() != manifest["files"][VOCAB_FILE].lower()
    ):
        raise BundleError(
            f"{VOCAB_FILE}: sha256 does not match the manifest's vocab_sha256 "
            f"({str(vocab_digest)[:12]}...): the vocabulary is not the one the model was built for"
        )
    return roles


def _parse_vocabs(data: Any, student: StudentShape) -> dict[str, dict[str, int]]:
    if not isinstance(data, dict):
        raise BundleError(f"{VOCAB_FILE}: expected an object kind -> {{token: id}}")
    out = {}
    for kind in VOCAB_KINDS:
        vocab = data.get(kind)
        where = f"{VOCAB_FILE}[{kind!r}]"
        if not isinstance(vocab, dict):
            raise BundleError(f"{where}: missing or not an object token -> id")
        if not all(
            isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool)
            for t, i in vocab.items()
        ):
            raise BundleError(f"{where}: tokens must be strings and ids integers")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise BundleError(f"{where}: ids must be 0..{len(vocab) - 1} with no gaps or repeats")
        if vocab.get(PAD) != PAD_ID or vocab.get(UNK) != UNK_ID:
            raise BundleError(f"{where}: {PAD!r} must be id {PAD_ID} and {UNK!r} id {UNK_ID}")
        expected = getattr(student, f"n_{kind}")
        if len(vocab) != expected:
            raise BundleError(
                f"{where}: {len(vocab)} tokens, but the model was built for {expected}"
            )
        out[kind] = dict(vocab)
    return out


def _parse_labels(data: Any, medications: dict[str, int], n_labels: int) -> list[tuple[str, str]]:
    if not isinstance(data, list) or not all(
        isinstance(x, dict) and isinstance(x.get("code"), str) and isinstance(x.get("name"), str)
        for x in data
    ):
        raise BundleError(f'{LABELS_FILE}: expected a list of {{"code": ..., "name": ...}}')
    if len(data) != n_labels:
        raise BundleError(f"{LABELS_FILE}: {len(data)} labels, but the model scores {n_labels}")
    for i, x in enumerate(data):
        if medications.get(x["code"]) != i + LABEL_OFFSET:
            raise BundleError(
                f"{LABELS_FILE}: label {i} is {x['code']!r}, but {VOCAB_FILE} gives that "
                f"medication id {medications.get(x['code'])} (expected {i + LABEL_OFFSET})"
            )
    return [(x["code"], x["name"]) for x in data]


def _parse_ddi(data: Any) -> frozenset[frozenset[str]]:
    if not isinstance(data, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(c, str) for c in p) for p in data
    ):
        raise BundleError(f'{DDI_FILE}: expected a list of code pairs [["A02B", "B01A"], ...]')
    return frozenset(frozenset(p) for p in data if p[0] != p[1])


def _parse_titles(data: Any) -> dict[str, str]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise BundleError(f"{TITLES_FILE}: expected an object code -> title")
    return dict(data)


def _parse_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(f"{MANIFEST_FILE}: 'threshold' must be a number; got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise BundleError(f"{MANIFEST_FILE}: 'threshold' must be in [0, 1]; got {value}")
    return value


def load_bundle(path: str | Path) -> Bundle:
    """Verify, then read, the bundle directory at `path`; BundleError says what is wrong.

    Nothing is parsed before the manifest's format is known and every listed file's sha256 has
    been checked. Files in the directory that the manifest does not list are ignored.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a bundle directory (expected {MANIFEST_FILE} inside)")
    manifest = read_manifest(folder, DOMAIN)[0]
    roles = _verify_files(folder, manifest)

    model = manifest["model"]
    if list(model.get("inputs", INPUT_NAMES)) != list(INPUT_NAMES):
        raise BundleError(
            f"{MANIFEST_FILE}: model inputs {model.get('inputs')} are not {list(INPUT_NAMES)}"
        )
    if "logits" not in model.get("outputs", OUTPUT_NAMES):
        raise BundleError(f"{MANIFEST_FILE}: the model has no 'logits' output")
    student = StudentShape.from_dict(
        manifest.get("student_config"), f"{MANIFEST_FILE}: student_config"
    )
    tensor = _tensor_config(manifest.get("tensor_config"), f"{MANIFEST_FILE}: tensor_config")
    threshold = _parse_threshold(manifest.get("threshold"))

    vocabs = _parse_vocabs(read_json(folder, VOCAB_FILE), student)
    labels = _parse_labels(read_json(folder, LABELS_FILE), vocabs["medications"], student.n_labels)
    return Bundle(
        path=folder,
        manifest=manifest,
        vocabs=vocabs,
        label_codes=tuple(c for c, _ in labels),
        label_names=tuple(n for _, n in labels),
        ddi=_parse_ddi(read_json(folder, DDI_FILE)),
        titles=_parse_titles(read_json(folder, TITLES_FILE)),
        threshold=threshold,
        student_config=student,
        tensor_config=tensor,
        model_path=folder / roles["model"],
        weights_path=folder / roles["numpy weights"],
    )
