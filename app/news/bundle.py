"""A news bundle, verified and parsed: the two int8 encoders, the piece tokenizer and the
catalog with its cold-start counts.

The tokenizer: the bundle's `tokenizer.json` (the teacher's own, manifest key "tokenizer_json")
in the `tokenizers` library where it imports, else the pure-Python one that pieces.json
describes (bundles from before tokenizer.json still load: they get the pure-Python one).

`load_news_bundle(path)` checks the manifest (format "pocketrec-bundle/1", domain "news", every
listed file present with the right sha256, every required file listed: `contract.bundle`)
before it parses anything, then reads the piece vocabulary and the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.news.tokenizer import LibraryTokenizer, PieceTokenizer, item_text, make_tokenizer
from contract.bundle import MANIFEST_FILE, BundleError, read_json, read_manifest, verify_files

DOMAIN = "news"
ITEM_INPUTS = ("tokens",)
USER_INPUTS = ("history_vecs", "history_mask")

__all__ = ["DOMAIN", "CatalogItem", "NewsBundle", "load_news_bundle"]


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str
    category: str = ""

    @property
    def text(self) -> str:
        return item_text(self.title, self.category)


@dataclass(frozen=True)
class NewsBundle:
    """A verified, parsed news bundle. Build it with `load_news_bundle`."""

    path: Path
    manifest: dict
    sha: str  # sha256 of manifest.json: names this bundle in the item-vector cache
    tokenizer: PieceTokenizer | LibraryTokenizer = field(repr=False)
    catalog: dict[str, CatalogItem] = field(repr=False)
    item_model_path: Path
    user_model_path: Path
    dim: int
    max_history: int
    # cold start: clicks and first-seen unix times of catalog items in the training data, and
    # the clock ("now", None = the device's) and half-life the export chose for them
    clicks: dict[str, float] = field(default_factory=dict, repr=False)
    seen: dict[str, float] = field(default_factory=dict, repr=False)
    cold_start: dict = field(default_factory=lambda: {"now": None, "half_life_hours": 24.0})

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def max_tokens(self) -> int:
        return self.tokenizer.max_tokens


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{where} must be an integer >= 1; got {value!r}")
    return value


def _roles(manifest: dict) -> dict[str, str]:
    models = manifest.get("models")
    if not isinstance(models, dict) or not all(
        isinstance(models.get(k), dict) for k in ("item", "user")
    ):
        raise BundleError(f"{MANIFEST_FILE}: 'models' must have 'item' and 'user' objects")
    roles = {
        "item encoder": models["item"].get("file"),
        "user encoder": models["user"].get("file"),
        "pieces": manifest.get("pieces"),
        "catalog": manifest.get("catalog"),
    }
    return roles


def _count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _parse_catalog(data: Any, name: str) -> tuple[dict[str, CatalogItem], dict, dict]:
    """(items, clicks, first seen): the optional "clicks" and "seen" (unix time) of a row
    feed the cold start."""
    if not isinstance(data, dict):
        raise BundleError(f"{name}: expected an object item id -> {{title, category}}")
    out, clicks, seen = {}, {}, {}
    for item_id, row in data.items():
        if not (
            isinstance(row, dict)
            and isinstance(row.get("title"), str)
            and isinstance(row.get("category", ""), str)
        ):
            raise BundleError(f"{name}: item {item_id!r} needs a string title and category")
        out[item_id] = CatalogItem(item_id, row["title"], row.get("category", ""))
        for key, into in (("clicks", clicks), ("seen", seen)):
            if key in row:
                if not _count(row[key]):
                    raise BundleError(
                        f"{name}: item {item_id!r}: {key!r} must be a number >= 0, got {row[key]!r}"
                    )
                into[item_id] = float(row[key])
    return out, clicks, seen


def _cold_start(manifest: dict) -> dict:
    raw = manifest.get("cold_start", {})
    now = raw.get("now") if isinstance(raw, dict) else None
    half = raw.get("half_life_hours", 24.0) if isinstance(raw, dict) else None
    if (
        not isinstance(raw, dict)
        or (now is not None and not _count(now))
        or not (_count(half) and half > 0)
    ):
        raise BundleError(
            f"{MANIFEST_FILE}: 'cold_start' must be {{now: unix time or null, "
            f"half_life_hours: > 0}}, got {raw!r}"
        )
    return {"now": None if now is None else float(now), "half_life_hours": float(half)}


def _tokenizer_json(folder: Path, manifest: dict) -> str | None:
    """The text of the bundle's tokenizer.json, verified like every listed file; None for a
    bundle without one."""
    name = manifest.get("tokenizer_json")
    if name is None:
        return None
    if not isinstance(name, str):
        raise BundleError(f"{MANIFEST_FILE}: tokenizer_json must be a file name, got {name!r}")
    if name not in (manifest.get("files") or {}):
        raise BundleError(f"{MANIFEST_FILE}: tokenizer_json {name!r} is not listed in 'files'")
    try:
        return (folder / name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{name}: cannot read it ({e})") from e


def load_news_bundle(path: str | Path, prefer_library_tokenizer: bool = True) -> NewsBundle:
    """Verify, then read, the news bundle directory at `path`; BundleError says what is wrong.

    Nothing is parsed before the manifest's format and domain are known and every listed file's
    sha256 has been checked. Files the manifest does not list are ignored.
    `prefer_library_tokenizer`: use tokenizer.json in the `tokenizers` library when both are
    there (False: always the pure-Python tokenizer).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a bundle directory (expected {MANIFEST_FILE} inside)")
    manifest, sha = read_manifest(folder, DOMAIN)
    roles = verify_files(folder, manifest, _roles(manifest))
    for role, want in (("item", ITEM_INPUTS), ("user", USER_INPUTS)):
        got = manifest["models"][role].get("inputs")
        if list(got or ()) != list(want):
            raise BundleError(f"{MANIFEST_FILE}: the {role} encoder's inputs {got} are not {want}")
    student = manifest.get("student_config")
    if not isinstance(student, dict):
        raise BundleError(f"{MANIFEST_FILE}: 'student_config' must be an object")
    dim = _positive_int(student.get("dim"), f"{MANIFEST_FILE}: student_config.dim")
    vocab_size = _positive_int(
        student.get("vocab_size"), f"{MANIFEST_FILE}: student_config.vocab_size"
    )
    max_history = _positive_int(manifest.get("max_history"), f"{MANIFEST_FILE}: max_history")

    tokenizer = make_tokenizer(
        read_json(folder, roles["pieces"]),
        _tokenizer_json(folder, manifest),
        prefer_library=prefer_library_tokenizer,
        name=str(manifest.get("tokenizer_json")),
    )
    if len(tokenizer.pieces) != vocab_size:
        raise BundleError(
            f"{roles['pieces']}: {len(tokenizer.pieces)} pieces, but the item encoder was built "
            f"for {vocab_size}"
        )
    catalog, clicks, seen = _parse_catalog(read_json(folder, roles["catalog"]), roles["catalog"])
    return NewsBundle(
        path=folder,
        manifest=manifest,
        sha=sha,
        tokenizer=tokenizer,
        catalog=catalog,
        item_model_path=folder / roles["item encoder"],
        user_model_path=folder / roles["user encoder"],
        dim=dim,
        max_history=max_history,
        clicks=clicks,
        seen=seen,
        cold_start=_cold_start(manifest),
    )
