"""The bundle format: the one folder the app needs, and the check it passes before any use.

```
manifest.json  {"format": "pocketrec-bundle/1", "domain", "name", "created", "model", "files":
                {"<name>": "<sha256>", ...}, ...}
```
Export writes these names; the app reads them through `read_manifest` and `verify_files`, which
refuse an unknown format, another domain's bundle, a listed file that is missing or altered, and
a needed file that is not listed (it could not be verified).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from contract.files import sha256_file

__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "CARD_FILE",
    "CATALOG_FILE",
    "DDI_FILE",
    "ITEM_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PIECES_FILE",
    "PIECES_FORMAT",
    "SUPPORTED_FORMATS",
    "TITLES_FILE",
    "USER_FILE",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "is_sha256",
    "plain_name",
    "read_json",
    "read_manifest",
    "verify_files",
]

BUNDLE_FORMAT = "pocketrec-bundle/1"
SUPPORTED_FORMATS = (BUNDLE_FORMAT,)
MANIFEST_FILE = "manifest.json"
CARD_FILE = "card.md"

# medication bundles
MODEL_FILE = "model.int8.onnx"
WEIGHTS_FILE = "weights.npz"  # the float16 student for the numpy fallback
VOCAB_FILE = "vocab.json"
LABELS_FILE = "labels.json"
DDI_FILE = "ddi.json"
TITLES_FILE = "titles.json.gz"  # the largest side file: gzip keeps the bundle under 1 MB

# news bundles
ITEM_FILE = "item_encoder.int8.onnx"
USER_FILE = "user_encoder.int8.onnx"
PIECES_FILE = "pieces.json"
PIECES_FORMAT = "pocketrec-news-pieces/1"
CATALOG_FILE = "catalog.json.gz"


class BundleError(Exception):
    """A bundle that cannot be used: missing, corrupt, tampered with, or of an unknown format."""


def is_sha256(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value.lower())
    )


def plain_name(name: Any) -> bool:
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
    """The manifest of a bundle of `domain`, format checked; -> (manifest, its own sha256)."""
    path = Path(folder) / MANIFEST_FILE
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


def verify_files(folder: Path, manifest: dict, roles: dict[str, str]) -> dict[str, str]:
    """Check every listed file's sha256 and that every file in `roles` (role -> file name) is
    listed, before anything is parsed; returns `roles`."""
    folder = Path(folder)
    for role, name in roles.items():
        if not plain_name(name):
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
        if not plain_name(name) or name == MANIFEST_FILE:
            raise BundleError(f"{MANIFEST_FILE}: 'files' lists {name!r}, not a bundle file name")
        if not is_sha256(digest):
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
        raw = (Path(folder) / name).read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise BundleError(f"{name}: not valid JSON ({e})") from None
