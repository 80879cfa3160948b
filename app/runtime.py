"""Load a medication bundle and score visits, with numpy and (when installed) onnxruntime only.

This module is on the app's side of the dependency wall: the standard library, numpy and,
optionally, onnxruntime. It never imports torch, safetensors, pandas, `distill` or `export`.

- `load_bundle(path)` checks the manifest (known format, every listed file present with the
  right sha256, every required file listed) before it parses anything, then reads the vocabularies,
  labels, DDI pairs and titles;
- `encode_visit` turns one live visit into the student's input arrays, exactly as
  `distill.data.tensors.encode_visit` does;
- two backends compute the logits: `OrtBackend` (the bundle's ONNX model) and `NumpyBackend`
  (the fp32 student re-implemented in numpy from `weights.npz`, for builds without onnxruntime);
- `Recommender` ties them together: ranked drug classes, a decision threshold and DDI warnings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_FORMATS = ("pocketrec-bundle/1",)
DOMAIN = "medication"
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.json"
LABELS_FILE = "labels.json"
DDI_FILE = "ddi.json"
TITLES_FILE = "titles.json.gz"  # the largest side file: gzip keeps the bundle under 1 MB

# the positional order of the student's forward and of the ONNX graph's inputs
INPUT_NAMES = ("dx", "px", "med", "visit_mask", "profile")
OUTPUT_NAMES = ("logits", "features")
VOCAB_KINDS = ("diagnoses", "procedures", "medications", "profile")
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
LABEL_OFFSET = 2  # label index = medication id - 2

MASK_VALUE = -1e4  # additive attention mask of the student
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the student uses
BACKENDS = ("auto", "onnxruntime", "numpy")

__all__ = [
    "BACKENDS",
    "INPUT_NAMES",
    "SUPPORTED_FORMATS",
    "Bundle",
    "BundleError",
    "NumpyBackend",
    "OrtBackend",
    "Recommendation",
    "Recommender",
    "StudentShape",
    "TensorConfig",
    "encode_visit",
    "erf",
    "gelu",
    "load_bundle",
    "onnxruntime_available",
    "sha256_file",
    "sigmoid",
]


class BundleError(Exception):
    """A bundle that cannot be used: missing, corrupt, tampered with, or of an unknown format."""


# --------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class TensorConfig:
    """Input array sizes (mirrors `distill.data.tensors.TensorConfig`)."""

    max_visits: int
    max_diagnoses: int
    max_procedures: int
    max_medications: int
    max_profile: int

    @classmethod
    def from_dict(cls, data: Any, where: str = "tensor_config") -> TensorConfig:
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: expected an object, got {type(data).__name__}")
        names = [f for f in cls.__dataclass_fields__]
        missing = [n for n in names if n not in data]
        extra = sorted(set(data) - set(names))
        if missing or extra:
            raise BundleError(f"{where}: missing fields {missing}, unknown fields {extra}")
        return cls(**{n: _positive_int(data[n], f"{where}.{n}") for n in names})


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value.lower())
    )


def _plain_name(name: Any) -> bool:
    """A file name directly inside the bundle directory (no folders, no way out)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and ":" not in name
    )


def read_manifest(folder: Path, domain: str) -> tuple[dict, str]:
    """The manifest of a bundle of `domain`, format checked; -> (manifest, its own sha256).

    Shared by every domain's runtime (medication here, news in app/news_runtime.py).
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{MANIFEST_FILE}: missing from the bundle at {folder}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST_FILE}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_FILE}: expected a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt not in SUPPORTED_FORMATS:
        hint = ""
        if isinstance(fmt, str) and fmt.startswith("pocketrec-bundle/"):
            hint = " (a bundle from a newer or older exporter: update the app or re-export)"
        raise BundleError(
            f"{MANIFEST_FILE}: bundle format {fmt!r} is not supported{hint}; "
            f"supported formats: {', '.join(SUPPORTED_FORMATS)}"
        )
    if manifest.get("domain") != domain:
        raise BundleError(
            f"{MANIFEST_FILE}: domain {manifest.get('domain')!r} is not {domain!r}; "
            f"this runtime reads {domain} bundles"
        )
    return manifest, hashlib.sha256(raw).hexdigest()


def _read_manifest(folder: Path) -> dict:
    return read_manifest(folder, DOMAIN)[0]


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
        if not _plain_name(name):
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


def verify_files(folder: Path, manifest: dict, roles: dict[str, str]) -> dict[str, str]:
    """Check every listed file's sha256 and that every file in `roles` (role -> file name) is
    listed, before anything is parsed; returns `roles`. Shared by every domain's runtime."""
    for role, name in roles.items():
        if not _plain_name(name):
            raise BundleError(f"{MANIFEST_FILE}: the {role} file name {name!r} is not a plain name")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{MANIFEST_FILE}: 'files' must be a non-empty object name -> sha256")
    for role, name in roles.items():
        if name not in files:
            raise BundleError(
                f"{MANIFEST_FILE}: required {role} file {name!r} is not listed in 'files' "
                "(it cannot be verified, so it is not loaded)"
            )
    for name, digest in files.items():
        if not _plain_name(name) or name == MANIFEST_FILE:
            raise BundleError(f"{MANIFEST_FILE}: 'files' lists {name!r}, not a bundle file name")
        if not _is_sha256(digest):
            raise BundleError(f"{MANIFEST_FILE}: the sha256 of {name!r} is not 64 hex digits")
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{name}: listed in {MANIFEST_FILE} but missing from {folder}")
        actual = sha256_file(path)
        if actual != digest.lower():
            raise BundleError(
                f"{name}: sha256 mismatch (manifest {digest[:12]}..., file {actual[:12]}...): "
                "the file is corrupt or was modified after export"
            )
    return roles


def read_json(folder: Path, name: str) -> Any:
    """A bundle's JSON side file (gzipped when the name ends in .gz); BundleError if broken."""
    try:
        raw = (folder / name).read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise BundleError(f"{name}: not valid JSON ({e})") from None


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
    manifest = _read_manifest(folder)
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
    tensor = TensorConfig.from_dict(
        manifest.get("tensor_config"), f"{MANIFEST_FILE}: tensor_config"
    )
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


# --------------------------------------------------------------------------------------------
# encoding a live visit


def _code_list(codes: Any, what: str) -> list[str]:
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
        _code_list(dx, "history diagnoses"),
        _code_list(px, "history procedures"),
        _code_list(med, "history medications"),
    )


def _profile_tokens(profile: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    pairs = profile.items() if isinstance(profile, Mapping) else profile
    return [f"{k}={v}" for k, v in pairs]


def _put(row: np.ndarray, vocab: dict[str, int], codes: Sequence[str], unknown: dict) -> None:
    """Ids of the first len(row) codes into row; unknown codes -> <unk>, recorded in order."""
    for j, code in enumerate(codes[: row.shape[0]]):
        i = vocab.get(code, UNK_ID)
        if i == UNK_ID:
            unknown.setdefault(code, None)
        row[j] = i


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
    `distill.data.tensors`: visits right-aligned with the current one last, only the last
    `max_visits` kept, the first `max_*` codes of each visit kept, the current visit's medication
    row empty. Unknown codes become <unk> (id 1) and are returned once each, in order seen
    (only codes that made it into the arrays).
    """
    tc = bundle.tensor_config
    v = tc.max_visits
    out = {
        "dx": np.zeros((1, v, tc.max_diagnoses), dtype=np.int64),
        "px": np.zeros((1, v, tc.max_procedures), dtype=np.int64),
        "med": np.zeros((1, v, tc.max_medications), dtype=np.int64),
        "visit_mask": np.zeros((1, v), dtype=np.float32),
        "profile": np.zeros((1, tc.max_profile), dtype=np.int64),
    }
    visits = [_history_visit(h) for h in history]
    visits.append((_code_list(diagnoses, "diagnoses"), _code_list(procedures, "procedures"), []))
    kept = visits[-v:]
    start = v - len(kept)
    unknown: dict[str, None] = {}
    voc = bundle.vocabs
    for j, (dx, px, med) in enumerate(kept):
        slot = start + j
        _put(out["dx"][0, slot], voc["diagnoses"], dx, unknown)
        _put(out["px"][0, slot], voc["procedures"], px, unknown)
        if slot != v - 1:
            _put(out["med"][0, slot], voc["medications"], med, unknown)
        out["visit_mask"][0, slot] = 1.0
    _put(out["profile"][0], voc["profile"], _profile_tokens(profile), unknown)
    return out, list(unknown)


# --------------------------------------------------------------------------------------------
# math


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + t (a2 + ...)) exp(-x^2), t = 1 / (1 + p x),
# for x >= 0, |error| <= 1.5e-7; odd symmetry for x < 0. Evaluated in float64.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, |error| <= 1.5e-7 (float64 in, float64 out)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * z)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return np.copysign(1.0 - poly * np.exp(-z * z), x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch.nn.GELU(); keeps x's float dtype."""
    x64 = np.asarray(x, dtype=np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 * (1.0 / math.sqrt(2.0))))).astype(x.dtype, copy=False)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * w + b


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function; float32 out."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# backends


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _check_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}; expected {list(INPUT_NAMES)}")
    out = {n: np.ascontiguousarray(inputs[n], dtype=np.int64) for n in ("dx", "px", "med")}
    out["visit_mask"] = np.ascontiguousarray(inputs["visit_mask"], dtype=np.float32)
    out["profile"] = np.ascontiguousarray(inputs["profile"], dtype=np.int64)
    b, v = out["visit_mask"].shape
    for n in ("dx", "px", "med"):
        if out[n].ndim != 3 or out[n].shape[:2] != (b, v):
            raise ValueError(f"inputs[{n!r}] has shape {out[n].shape}; expected ({b}, {v}, N)")
    if out["profile"].ndim != 2 or out["profile"].shape[0] != b:
        raise ValueError(f"inputs['profile'] has shape {out['profile'].shape}; expected ({b}, P)")
    return out


class OrtBackend:
    """The bundle's ONNX model in an onnxruntime session (CPU, sequential)."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{self.model_path.name}: onnxruntime cannot load it ({e})") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = sorted(set(self.input_names) - set(INPUT_NAMES))
        outputs = [o.name for o in self.session.get_outputs()]
        if unknown or "logits" not in outputs:
            raise BundleError(
                f"{self.model_path.name}: graph inputs {self.input_names} / outputs {outputs} "
                f"are not the student's {list(INPUT_NAMES)} / {list(OUTPUT_NAMES)}"
            )

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """-> logits [B, n_labels], float32."""
        arrays = _check_inputs(inputs)
        feed = {n: arrays[n] for n in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)


def _expected_shapes(s: StudentShape, repeat_head: bool) -> dict[str, tuple[int, ...]]:
    d = s.dim
    n_embed = s.n_diagnoses + s.n_procedures + s.n_medications + s.n_profile
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (n_embed, d)}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    for kind in ("dx_set.0", "px_set.0", "med_set.0", "profile_proj", "med_align"):
        linear(kind, d, d)
    linear("visit_proj", 3 * d, d)
    shapes["slot_embed.weight"] = (s.max_visits, d)
    for i in range(s.visit_layers):
        p = f"blocks.{i}"
        for ln in ("ln1", "ln2"):
            shapes[f"{p}.{ln}.weight"] = (d,)
            shapes[f"{p}.{ln}.bias"] = (d,)
        for proj in ("q", "k", "v", "out"):
            linear(f"{p}.attn.{proj}", d, d)
        linear(f"{p}.mlp.0", d, 4 * d)
        linear(f"{p}.mlp.2", 4 * d, d)
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    linear("feature", 2 * d, d)
    linear("head.0", d, d)
    linear("head.3", d, s.n_labels)
    if repeat_head:
        shapes["repeat_last"] = (s.n_labels,)
        shapes["repeat_mean"] = (s.n_labels,)
    return shapes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path.name}: not a readable .npz of arrays ({e})") from e


class NumpyBackend:
    """The student's forward pass in numpy (float32), from `weights.npz` and the config alone.

    Mirrors `distill.student.LeaderStudent` in eval mode (dropout is the identity).
    """

    name = "numpy"

    def __init__(self, weights_npz: str | Path, student_config: StudentShape | Mapping) -> None:
        self.weights_path = Path(weights_npz)
        where = self.weights_path.name
        cfg = StudentShape.from_dict(student_config)
        raw = _read_npz(self.weights_path)
        repeat = cfg.repeat_head if cfg.repeat_head is not None else "repeat_last" in raw
        expected = _expected_shapes(cfg, repeat)
        missing = sorted(set(expected) - set(raw))
        extra = sorted(set(raw) - set(expected))
        if missing or extra:
            raise BundleError(
                f"{where}: does not fit the student config (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for k, shape in expected.items():
            if raw[k].shape != shape:
                raise BundleError(f"{where}: {k} has shape {raw[k].shape}, expected {shape}")
            if not np.issubdtype(raw[k].dtype, np.floating):
                raise BundleError(f"{where}: {k} is {raw[k].dtype}, not floating point")
        self.config = cfg
        self.repeat_head = bool(repeat)
        f32 = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in raw.items()}
        self._prepare(f32)

    def _prepare(self, w: dict[str, np.ndarray]) -> None:
        """Pre-transpose the Linear weights (y = x @ W^T + b) and fuse q, k, v."""
        c = self.config

        def lin(name: str) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(w[f"{name}.weight"].T), w[f"{name}.bias"]

        self.embed = w["embed.weight"]
        self.offsets = {
            "dx": 0,
            "px": c.n_diagnoses,
            "med": c.n_diagnoses + c.n_procedures,
            "profile": c.n_diagnoses + c.n_procedures + c.n_medications,
        }
        self.sizes = {
            "dx": c.n_diagnoses,
            "px": c.n_procedures,
            "med": c.n_medications,
            "profile": c.n_profile,
        }
        self.dx_set, self.px_set, self.med_set = lin("dx_set.0"), lin("px_set.0"), lin("med_set.0")
        self.visit_proj = lin("visit_proj")
        self.slot_embed = w["slot_embed.weight"]
        self.profile_proj = lin("profile_proj")
        self.blocks = []
        for i in range(c.visit_layers):
            p = f"blocks.{i}"
            qkv_w = np.concatenate([w[f"{p}.attn.{n}.weight"] for n in "qkv"], axis=0)
            qkv_b = np.concatenate([w[f"{p}.attn.{n}.bias"] for n in "qkv"], axis=0)
            self.blocks.append(
                {
                    "ln1": (w[f"{p}.ln1.weight"], w[f"{p}.ln1.bias"]),
                    "qkv": (np.ascontiguousarray(qkv_w.T), qkv_b),
                    "out": lin(f"{p}.attn.out"),
                    "ln2": (w[f"{p}.ln2.weight"], w[f"{p}.ln2.bias"]),
                    "mlp0": lin(f"{p}.mlp.0"),
                    "mlp2": lin(f"{p}.mlp.2"),
                }
            )
        self.ln_f = (w["ln_f.weight"], w["ln_f.bias"])
        self.feature = lin("feature")
        self.head0, self.head3 = lin("head.0"), lin("head.3")
        if self.repeat_head:
            # label l is medication id l + 2 (the model's fixed med_to_label table)
            table = np.zeros((c.n_medications, c.n_labels), dtype=np.float32)
            n = min(c.n_medications - LABEL_OFFSET, c.n_labels)
            table[LABEL_OFFSET + np.arange(n), np.arange(n)] = 1.0
            self.med_to_label = table
            self.repeat_last = w["repeat_last"]
            self.repeat_mean = w["repeat_mean"]

    def _code_set(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """ids [..., N] -> masked mean of their embeddings [..., D] (pads, id 0, left out)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.sizes[kind]):
            raise ValueError(f"inputs[{kind!r}] has ids outside 0..{self.sizes[kind] - 1}")
        mask = (ids != PAD_ID).astype(np.float32)
        emb = self.embed[ids + self.offsets[kind]]  # [..., N, D]
        total = np.matmul(mask[..., None, :], emb)[..., 0, :]
        count = np.maximum(mask.sum(axis=-1, keepdims=True), np.float32(1.0))
        return total / count

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """-> logits [B, n_labels], float32."""
        return self.forward(inputs)[0]

    def forward(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits [B, n_labels], features [B, dim]), as the student's forward."""
        a = _check_inputs(inputs)
        dx, px, med, mask, profile = (a[n] for n in INPUT_NAMES)
        b, n_visits = mask.shape
        d = self.config.dim
        h = self.config.heads
        hd = d // h

        def linear(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            return x @ wb[0] + wb[1]

        visits = np.concatenate(
            [
                gelu(linear(self._code_set(dx, "dx"), self.dx_set)),
                gelu(linear(self._code_set(px, "px"), self.px_set)),
                gelu(linear(self._code_set(med, "med"), self.med_set)),
            ],
            axis=-1,
        )  # [B, V, 3D]
        distance = np.minimum(np.arange(n_visits)[::-1], self.config.max_visits - 1)
        x = linear(visits, self.visit_proj) + self.slot_embed[distance]  # [B, V, D]
        token = linear(self._code_set(profile, "profile"), self.profile_proj)[:, None, :]
        x = np.concatenate([token, x], axis=1)  # [B, 1 + V, D]
        t = n_visits + 1

        keep = np.concatenate([np.ones((b, 1), dtype=np.float32), mask], axis=1)
        bias = ((np.float32(1.0) - keep) * np.float32(MASK_VALUE))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(hd))
        for blk in self.blocks:
            y = _layer_norm(x, *blk["ln1"])
            qkv = linear(y, blk["qkv"]).reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, hd]
            scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * scale + bias
            att = np.matmul(_softmax(scores), v).transpose(0, 2, 1, 3).reshape(b, t, d)
            x = x + linear(att, blk["out"])
            y = _layer_norm(x, *blk["ln2"])
            x = x + linear(gelu(linear(y, blk["mlp0"])), blk["mlp2"])
        x = _layer_norm(x, *self.ln_f)

        features = linear(np.concatenate([x[:, -1], x[:, 0]], axis=-1), self.feature)
        logits = linear(gelu(linear(features, self.head0)), self.head3)
        if self.repeat_head:
            logits = logits + self._repeat_logits(med, mask)
        return logits.astype(np.float32, copy=False), features.astype(np.float32, copy=False)

    def _repeat_logits(self, med: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hot = self.med_to_label[med].max(axis=2)  # [B, V, L]
        hist = np.concatenate([np.zeros_like(hot[:, :1]), hot[:, :-1]], axis=1)
        n_hist = np.maximum(mask.sum(axis=1, keepdims=True) - np.float32(1.0), np.float32(1.0))
        return self.repeat_last * hist[:, -1] + self.repeat_mean * hist.sum(axis=1) / n_hist


# --------------------------------------------------------------------------------------------
# the recommender


@dataclass
class Recommendation:
    """Ranked drug classes for one visit.

    `drugs`: [{"code", "name", "probability", "suggested"}] best first (`top_k` of them);
    `ddi`: (code, code, name, name) for each interacting pair among the suggested drugs;
    `unknown_codes`: input codes the model does not know (encoded as <unk>);
    `backend`: "onnxruntime" or "numpy"; `threshold`: the bundle's decision threshold.
    """

    drugs: list[dict[str, Any]]
    ddi: list[tuple[str, str, str, str]]
    unknown_codes: list[str]
    backend: str
    threshold: float = 0.5

    @property
    def suggested(self) -> list[dict[str, Any]]:
        return [d for d in self.drugs if d["suggested"]]


class Recommender:
    """Scores visits with a verified bundle; `backend` is "auto", "onnxruntime" or "numpy".

    "auto" uses onnxruntime when it can be imported, else the numpy re-implementation (some
    mobile builds ship without onnxruntime). `threads` sets onnxruntime's intra-op threads.
    """

    def __init__(self, bundle: Bundle | str | Path, backend: str = "auto", threads: int = 1):
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
        if backend == "auto":
            backend = "onnxruntime" if onnxruntime_available() else "numpy"
        self.bundle = bundle
        self.threads = threads
        self.engine: OrtBackend | NumpyBackend
        if backend == "onnxruntime":
            self.engine = OrtBackend(bundle.model_path, threads=threads)
        else:
            self.engine = NumpyBackend(bundle.weights_path, bundle.student_config)
        self.backend = backend

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    def encode(
        self,
        diagnoses: Sequence[str],
        procedures: Sequence[str],
        history: Sequence[Any] = (),
        profile: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        return encode_visit(self.bundle, diagnoses, procedures, history, profile)

    def logits(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.engine.run(trim_padding(inputs))

    def scores(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B, n_labels] (sigmoid of the logits), float32."""
        return sigmoid(self.logits(inputs))

    def recommend(
        self,
        diagnoses: Sequence[str],
        procedures: Sequence[str],
        history: Sequence[Any] = (),
        profile: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        top_k: int | None = 10,
    ) -> Recommendation:
        """The `top_k` most probable drug classes (all with None), flagged at the threshold."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise TypeError(f"top_k must be an integer or None; got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        inputs, unknown = self.encode(diagnoses, procedures, history, profile)
        probs = self.scores(inputs)[0]
        order = np.argsort(-probs, kind="stable")  # ties: label order
        if top_k is not None:
            order = order[:top_k]
        b = self.bundle
        drugs = [
            {
                "code": b.label_codes[i],
                "name": b.label_names[i],
                "probability": float(probs[i]),
                "suggested": bool(probs[i] >= b.threshold),
            }
            for i in order
        ]
        suggested = [d["code"] for d in drugs if d["suggested"]]
        pairs = [
            (x, y, b.label_name(x), b.label_name(y))
            for i, x in enumerate(suggested)
            for y in suggested[i + 1 :]
            if b.interacts(x, y)
        ]
        return Recommendation(drugs, pairs, unknown, self.backend, b.threshold)

    def ddi_with(
        self,
        drugs: Recommendation | Iterable[dict[str, Any] | str],
        accepted: Iterable[str],
    ) -> list[tuple[str, str, str, str]]:
        """(drug, accepted, drug name, accepted name) for each suggested drug that interacts
        with an already accepted drug code. `drugs`: a Recommendation, its `drugs` list (only
        the suggested ones count) or plain codes."""
        items = drugs.drugs if isinstance(drugs, Recommendation) else drugs
        codes = []
        for item in items:
            if isinstance(item, str):
                codes.append(item)
            elif item.get("suggested", True):
                codes.append(item["code"])
        accepted = _code_list(accepted, "accepted")
        b = self.bundle
        return [
            (x, y, b.label_name(x), b.label_name(y))
            for x in codes
            for y in dict.fromkeys(accepted)
            if b.interacts(x, y)
        ]
