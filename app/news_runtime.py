"""Rank news on the device from a news bundle, with numpy, onnxruntime and sqlite3 only.

This module is on the app's side of the dependency wall: the standard library, numpy and
onnxruntime. It never imports torch, transformers, `distill` or `export`.

- `load_news_bundle(path)` checks the manifest (format "pocketrec-bundle/1", domain "news",
  every listed file present with the right sha256, every required file listed) before it parses
  anything, then reads the piece vocabulary and the catalog;
- `PieceTokenizer` turns a title into the student's piece ids without transformers: the teacher
  tokenizer is described as data in pieces.json (normalizer steps, pre-tokenizer, WordPiece or
  WordLevel vocabulary, special tokens) and re-implemented here -- BERT's basic tokenizer
  (clean-up, CJK spacing, accent stripping, lower-casing, whitespace and punctuation splitting)
  and greedy longest-match-first WordPiece. It gives the Hugging Face tokenizer's pieces for
  every title of the shipped MovieLens sample (tests/test_news_export.py). Known gap: character
  classes come from Python's `unicodedata`, the tokenizers library has older Unicode tables, so
  the ~500 code points whose category is newer than those (marks and punctuation of scripts
  encoded since about Unicode 10, e.g. Newa, Soyombo, some Arabic marks) can split differently.
  The WordLevel / Whitespace variant (the tests' tiny teacher) uses Python's regex word class;
- `ItemStore` computes each item's vector once with the int8 item encoder and keeps it in SQLite
  (table ``item_vectors``), recomputing only for items it has no vector of, items whose text
  changed, or a different bundle;
- `NewsRanker` ranks: user vector from the clicked items' cached vectors (int8 user encoder), then
  one dot product per candidate; with an empty history it falls back to popular-and-recent items
  when the caller passes click counts; `why` names the clicked items closest to a suggestion.

Item and user vectors are computed one item / one user per encoder call with no padding: dynamic
int8 quantization scales activations per call, so padding or batch neighbours would change an
item's vector, and a cached vector must not depend on which batch computed it. The exporter's
int8 parity check (`export.news`) measures exactly this way of computing.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime import BundleError, read_json, read_manifest, verify_files

DOMAIN = "news"
MANIFEST_FILE = "manifest.json"
PIECES_FORMAT = "pocketrec-news-pieces/1"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
ITEM_INPUTS = ("tokens",)
USER_INPUTS = ("history_vecs", "history_mask")
TABLE = "item_vectors"

__all__ = [
    "DOMAIN",
    "TABLE",
    "BundleError",
    "CatalogItem",
    "ItemStore",
    "NewsBundle",
    "NewsEncoders",
    "NewsRanker",
    "PieceTokenizer",
    "RankedItem",
    "Ranking",
    "item_text",
    "load_news_bundle",
]


# --------------------------------------------------------------------------------------------
# the tokenizer

# Rust's char::is_whitespace (the Unicode White_Space property), which the tokenizers library
# uses; Python's str.isspace also counts U+001C..U+001F, which it does not.
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
# BERT's "Chinese character" blocks, as the tokenizers library's BertNormalizer has them
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# removed by BertNormalizer's clean-up (besides NUL and U+FFFD): control, format, private use
# and surrogate code points -- tab, line feed and carriage return excepted (they are spaces)
_REMOVED_CATEGORIES = frozenset(("Cc", "Cf", "Co", "Cs"))
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_WORDS = re.compile(r"\w+|[^\w\s]+")  # the tokenizers Whitespace pre-tokenizer
NORMALIZER_STEPS = ("clean_text", "chinese_chars", "strip_accents", "lowercase")
PRE_TOKENIZERS = ("bert", "whitespace", "whitespace_split")
MODELS = ("wordpiece", "wordlevel")


def _is_cjk(c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in _CJK)


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def _clean_text(text: str) -> str:
    out = []
    for ch in text:  # removal first: U+000B, U+000C and U+0085 are controls, not spaces, here
        if ch in "\t\n\r":
            out.append(" ")
        elif ch == "\x00" or ch == "\ufffd" or unicodedata.category(ch) in _REMOVED_CATEGORIES:
            continue
        else:
            out.append(" " if ch in _WHITE_SPACE else ch)
    return "".join(out)


def _space_cjk(text: str) -> str:
    return "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in text)


def _strip_accents(text: str) -> str:
    return "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn"
    )


def _lowercase(text: str) -> str:
    # character by character, as Rust's char::to_lowercase: no final-sigma rule
    return text.lower() if text.isascii() else "".join(ch.lower() for ch in text)


_STEPS = {
    "clean_text": _clean_text,
    "chinese_chars": _space_cjk,
    "strip_accents": _strip_accents,
    "lowercase": _lowercase,
}


def _split_bert(text: str) -> list[str]:
    """Whitespace removed, every punctuation character a word of its own."""
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if ch in _WHITE_SPACE:
            if current:
                words.append("".join(current))
                current = []
        elif _is_punctuation(ch):
            if current:
                words.append("".join(current))
                current = []
            words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _split_whitespace(text: str) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if ch in _WHITE_SPACE:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _is_id_map(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and all(isinstance(k, str) for k in data)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values())
        and sorted(data.values()) == list(range(len(data)))
    )


class PieceTokenizer:
    """Title text -> the student's piece ids, as the training side made them.

    The training side ran the teacher's Hugging Face tokenizer (``tokenizer.tokenize``) on
    ``"category: title"`` and mapped each piece to the student's compact vocabulary (pieces it
    never saw become ``<unk>``), keeping the first `max_tokens`. `tokenize` reproduces the
    teacher tokenizer's pieces; `encode` the student's ids.
    """

    def __init__(self, spec: Mapping[str, Any], pieces: Mapping[str, int], max_tokens: int):
        where = "pieces.json"
        if not _is_id_map(dict(pieces)):
            raise BundleError(f"{where}: 'pieces' must map pieces to ids 0..n-1")
        if pieces.get(PAD) != PAD_ID or pieces.get(UNK) != UNK_ID:
            raise BundleError(f"{where}: {PAD!r} must be id {PAD_ID} and {UNK!r} id {UNK_ID}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BundleError(f"{where}: 'max_tokens' must be an integer >= 1")
        if not isinstance(spec, Mapping):
            raise BundleError(f"{where}: 'tokenizer' must be an object")
        steps = spec.get("normalizer") or []
        bad = [s for s in steps if s not in NORMALIZER_STEPS]
        if not isinstance(steps, list) or bad:
            raise BundleError(f"{where}: unknown normalizer steps {bad}; known {NORMALIZER_STEPS}")
        pre = spec.get("pre_tokenizer")
        if pre not in PRE_TOKENIZERS:
            raise BundleError(f"{where}: unknown pre-tokenizer {pre!r}; known {PRE_TOKENIZERS}")
        model = spec.get("model")
        if not isinstance(model, Mapping) or model.get("type") not in MODELS:
            raise BundleError(f"{where}: the tokenizer model must be one of {MODELS}")
        vocab = model.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(p, str) for p in vocab):
            raise BundleError(f"{where}: the tokenizer vocabulary must be a list of pieces")
        unk = model.get("unk_token")
        if not isinstance(unk, str) or unk not in vocab:
            raise BundleError(f"{where}: the unknown token {unk!r} is not in the vocabulary")
        specials = spec.get("special_tokens") or []
        if not isinstance(specials, list) or not all(isinstance(s, str) and s for s in specials):
            raise BundleError(f"{where}: 'special_tokens' must be a list of non-empty strings")

        self.pieces = dict(pieces)
        self.max_tokens = max_tokens
        self.steps = [_STEPS[s] for s in steps]
        self.step_names = tuple(steps)
        self.pre_tokenizer = pre
        self.kind = model["type"]
        self.vocab = frozenset(vocab)
        self.unk_token = unk
        self.prefix = str(model.get("continuing_subword_prefix", "##"))
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        self.longest = max((len(p) for p in vocab), default=1)
        self.specials = tuple(sorted(set(specials), key=lambda s: (-len(s), s)))
        self._special_re = (
            re.compile("(" + "|".join(re.escape(s) for s in self.specials) + ")")
            if self.specials
            else None
        )
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_document(cls, doc: Any) -> PieceTokenizer:
        """From the content of pieces.json."""
        if not isinstance(doc, Mapping) or doc.get("format") != PIECES_FORMAT:
            fmt = doc.get("format") if isinstance(doc, Mapping) else None
            raise BundleError(f"pieces.json: format {fmt!r} is not {PIECES_FORMAT!r}")
        return cls(doc.get("tokenizer"), doc.get("pieces") or {}, doc.get("max_tokens"))

    # the teacher tokenizer --------------------------------------------------------------

    def normalize(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text

    def words(self, text: str) -> list[str]:
        """The pre-tokenizer's words of already normalized text."""
        if self.pre_tokenizer == "bert":
            return _split_bert(text)
        if self.pre_tokenizer == "whitespace":
            return _WORDS.findall(text)
        return _split_whitespace(text)

    def _word_pieces(self, word: str) -> list[str]:
        if self.kind == "wordlevel":
            return [word if word in self.vocab else self.unk_token]
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        pieces = self._wordpiece(word)
        if len(self._cache) < 100_000:
            self._cache[word] = pieces
        return pieces

    def _wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first WordPiece; a word with an unmatched rest is unknown."""
        n = len(word)
        if n > self.max_chars:
            return [self.unk_token]
        out = []
        start = 0
        while start < n:
            end = min(n, start + self.longest)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    found = piece
                    break
                end -= 1
            if found is None:
                return [self.unk_token]
            out.append(found)
            start = end
        return out

    def tokenize(self, text: str) -> list[str]:
        """The pieces the teacher's ``tokenizer.tokenize(text)`` gives."""
        segments = self._special_re.split(text) if self._special_re else [text]
        out: list[str] = []
        for k, segment in enumerate(segments):
            if k % 2:  # a special token, matched on the raw text
                out.append(segment)
                continue
            for word in self.words(self.normalize(segment)):
                out.extend(self._word_pieces(word))
        return out

    # the student's ids ------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The student's piece ids of `text` (``<unk>`` for pieces it does not know), at most
        `max_tokens` of them."""
        get = self.pieces.get
        return [get(p, UNK_ID) for p in self.tokenize(text)[: self.max_tokens]]

    def encode_item(self, title: str, category: str = "") -> list[int]:
        return self.encode(item_text(title, category))


def item_text(title: str, category: str = "") -> str:
    """What the item encoder reads: ``"category: title"`` (just the title without category)."""
    category = (category or "").strip()
    title = (title or "").strip()
    return f"{category}: {title}" if category else title


# --------------------------------------------------------------------------------------------
# the bundle


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
    tokenizer: PieceTokenizer = field(repr=False)
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


def load_news_bundle(path: str | Path) -> NewsBundle:
    """Verify, then read, the news bundle directory at `path`; BundleError says what is wrong.

    Nothing is parsed before the manifest's format and domain are known and every listed file's
    sha256 has been checked. Files the manifest does not list are ignored.
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

    tokenizer = PieceTokenizer.from_document(read_json(folder, roles["pieces"]))
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


# --------------------------------------------------------------------------------------------
# the encoders


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"{path.name}: onnxruntime cannot load it ({e})") from e


class NewsEncoders:
    """The bundle's two int8 graphs in onnxruntime sessions (CPU, sequential, `threads`)."""

    def __init__(self, bundle: NewsBundle, threads: int = 1) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
        self.dim = bundle.dim
        self.item = _session(bundle.item_model_path, threads)
        self.user = _session(bundle.user_model_path, threads)
        for sess, want, path in (
            (self.item, ITEM_INPUTS, bundle.item_model_path),
            (self.user, USER_INPUTS, bundle.user_model_path),
        ):
            got = tuple(i.name for i in sess.get_inputs())
            if got != want or len(sess.get_outputs()) != 1:
                raise BundleError(f"{path.name}: graph inputs {got}, expected {want}")
        self._item_out = [self.item.get_outputs()[0].name]
        self._user_out = [self.user.get_outputs()[0].name]
        self.item_calls = 0
        self.user_calls = 0

    def item_vector(self, ids: Sequence[int]) -> np.ndarray:
        """One item's vector [dim] from its piece ids (no padding; one pad for no pieces)."""
        tokens = np.asarray([list(ids) or [PAD_ID]], dtype=np.int64)
        self.item_calls += 1
        (out,) = self.item.run(self._item_out, {"tokens": tokens})
        return np.asarray(out[0], dtype=np.float32)

    def user_vector(self, history_vecs: np.ndarray) -> np.ndarray:
        """One user's vector [dim] from the clicked items' vectors [H, dim], oldest first
        (H = 0: the model's cold-start vector)."""
        h = np.ascontiguousarray(history_vecs, dtype=np.float32)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"history vectors have shape {h.shape}; expected (H, {self.dim})")
        if len(h):
            vecs, mask = h[None], np.ones((1, len(h)), dtype=np.float32)
        else:  # as in training: one padding slot, masked out
            vecs = np.zeros((1, 1, self.dim), dtype=np.float32)
            mask = np.zeros((1, 1), dtype=np.float32)
        self.user_calls += 1
        (out,) = self.user.run(self._user_out, {"history_vecs": vecs, "history_mask": mask})
        return np.asarray(out[0], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# cached item vectors


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_item(item_id: str, value: Any) -> CatalogItem:
    if isinstance(value, CatalogItem):
        return CatalogItem(item_id, value.title, value.category)
    if isinstance(value, Mapping):
        title, category = value.get("title", ""), value.get("category", "")
    elif isinstance(value, str):
        title, category = value, ""
    else:
        title, category = value
    if not isinstance(title, str) or not isinstance(category, str):
        raise TypeError(f"item {item_id!r}: title and category must be strings")
    return CatalogItem(str(item_id), title, category)


@dataclass(frozen=True)
class _Snapshot:
    """The store's items and vectors at one moment; replaced whole, never changed in place, so
    a reader holding one sees a consistent set while `ItemStore.add_items` runs."""

    items: dict[str, CatalogItem]
    ids: list[str]
    row: dict[str, int]
    matrix: np.ndarray  # [n, dim] float32, row k = ids[k]
    norms: np.ndarray  # [n] float32


class ItemStore:
    """Item vectors computed once with the item encoder and kept in SQLite.

    Table ``item_vectors(item_id TEXT PRIMARY KEY, bundle_sha TEXT, text_sha TEXT, title TEXT,
    category TEXT, added INTEGER, vec BLOB)``: ``vec`` is the float32 vector's bytes,
    ``bundle_sha`` the sha256 of the manifest of the bundle that computed it, ``text_sha`` that
    of the text it was computed from, ``added`` 1 for items added with `add_items` (0 for the
    bundle's catalog). Opening a store brings the bundle's catalog and every item added before
    up to date: a vector is reused when both hashes match and computed (one encoder call)
    otherwise -- so a new bundle recomputes everything, an unchanged one nothing. Rows of an
    earlier bundle's catalog that the current catalog lacks are ignored. `encoder_calls`
    counts the item-encoder calls this store made.
    """

    def __init__(
        self,
        bundle: NewsBundle,
        db_path: str | Path,
        encoders: NewsEncoders | None = None,
        threads: int = 1,
    ) -> None:
        self.bundle = bundle
        self.encoders = encoders or NewsEncoders(bundle, threads)
        self.db_path = str(db_path)
        self.encoder_calls = 0
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.db_path, timeout=5.0, check_same_thread=False)
        with self._conn:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                "item_id TEXT PRIMARY KEY, bundle_sha TEXT NOT NULL, text_sha TEXT NOT NULL, "
                "title TEXT NOT NULL, category TEXT NOT NULL, added INTEGER NOT NULL, "
                "vec BLOB NOT NULL)"
            )
        rows = self._conn.execute(
            f"SELECT item_id, bundle_sha, text_sha, title, category, added, vec FROM {TABLE}"
        ).fetchall()
        cached = {r[0]: (r[1], r[2], r[6]) for r in rows}
        wanted = {i: (item, 0) for i, item in bundle.catalog.items()}
        for item_id, _, _, title, category, added, _ in rows:
            if added and item_id not in wanted:
                wanted[item_id] = (CatalogItem(item_id, title, category), 1)
        with self._lock:
            vectors = self._vectors(wanted, cached)
            items = {i: item for i, (item, _) in wanted.items()}
            self.snapshot = _make_snapshot(items, vectors)

    @property
    def items(self) -> dict[str, CatalogItem]:
        return self.snapshot.items

    @property
    def ids(self) -> list[str]:
        return self.snapshot.ids

    @property
    def row(self) -> dict[str, int]:
        return self.snapshot.row

    @property
    def matrix(self) -> np.ndarray:
        return self.snapshot.matrix

    def __len__(self) -> int:
        return len(self.snapshot.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.snapshot.row

    def close(self) -> None:
        self._conn.close()

    def vectors(self, item_ids: Iterable[str]) -> np.ndarray:
        """The cached vectors [n, dim] of `item_ids` (KeyError for an unknown one)."""
        snap = self.snapshot
        return snap.matrix[[snap.row[i] for i in item_ids]]

    def add_items(self, items: Mapping[str, Any]) -> int:
        """Add new items or new texts of known ones (id -> {"title", "category"}, or a
        (title, category) pair, or a title); returns how many vectors it computed."""
        parsed = {str(k): _as_item(str(k), v) for k, v in items.items()}
        with self._lock:
            snap = self.snapshot
            changed = {
                i: (item, 1)
                for i, item in parsed.items()
                if i not in snap.items or snap.items[i] != item
            }
            if not changed:
                return 0
            marks = ",".join("?" * len(changed))
            cached = {
                r[0]: (r[1], r[2], r[3])
                for r in self._conn.execute(
                    f"SELECT item_id, bundle_sha, text_sha, vec FROM {TABLE} "
                    f"WHERE item_id IN ({marks})",
                    list(changed),
                )
            }
            before = self.encoder_calls
            vectors = self._vectors(changed, cached)
            merged = dict(snap.items)
            matrix = [snap.matrix]
            extra = []
            replace = {}
            for k, (item_id, (item, _)) in enumerate(changed.items()):
                merged[item_id] = item
                if item_id in snap.row:
                    replace[snap.row[item_id]] = vectors[k]
                else:
                    extra.append(vectors[k])
            if replace:
                matrix = [snap.matrix.copy()]
                for r, v in replace.items():
                    matrix[0][r] = v
            if extra:
                matrix.append(np.stack(extra))
            self.snapshot = _make_snapshot(merged, np.concatenate(matrix))
            return self.encoder_calls - before

    def _vectors(
        self, wanted: dict[str, tuple[CatalogItem, int]], cached: dict[str, tuple]
    ) -> np.ndarray:
        """Vectors [len(wanted), dim] in `wanted`'s order: from `cached` (item id ->
        (bundle_sha, text_sha, vec bytes)) where both hashes match, else computed and saved."""
        dim = self.bundle.dim
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        fresh = []
        for k, (item_id, (item, added)) in enumerate(wanted.items()):
            text_sha = _text_sha(item.text)
            hit = cached.get(item_id)
            if (
                hit is not None
                and hit[:2] == (self.bundle.sha, text_sha)
                and len(hit[2]) == 4 * dim
            ):
                out[k] = np.frombuffer(hit[2], dtype=np.float32)
                continue
            vec = self.encoders.item_vector(self.bundle.tokenizer.encode(item.text))
            self.encoder_calls += 1
            out[k] = vec
            fresh.append(
                (
                    item_id,
                    self.bundle.sha,
                    text_sha,
                    item.title,
                    item.category,
                    added,
                    vec.tobytes(),
                )
            )
        if fresh:
            with self._conn:
                self._conn.executemany(
                    f"INSERT OR REPLACE INTO {TABLE} "
                    "(item_id, bundle_sha, text_sha, title, category, added, vec) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
        return out


def _make_snapshot(items: dict[str, CatalogItem], matrix: np.ndarray) -> _Snapshot:
    ids = list(items)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
    return _Snapshot(items, ids, {i: k for k, i in enumerate(ids)}, matrix, norms)


# --------------------------------------------------------------------------------------------
# ranking


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    title: str
    category: str


@dataclass
class Ranking:
    """`items` best first; `method`: "model" (user vector . item vectors) or "popular" (the
    cold-start fallback); `history_used`: the clicked items the user vector was built from;
    `unknown`: history or candidate ids the store does not know (left out)."""

    items: list[RankedItem]
    method: str
    history_used: list[str]
    unknown: list[str]

    @property
    def ids(self) -> list[str]:
        return [r.item_id for r in self.items]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; ties: the earlier index first."""
    n = len(scores)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(n), -scores))


class NewsRanker:
    """Ranks the store's items for a reader's clicks with a verified news bundle.

    `bundle`: a `NewsBundle` or its path; `db_path`: the SQLite file of the item vectors (see
    `ItemStore`); `max_history`: how many of the latest clicks build the user vector (default:
    the bundle's, what the student was trained with); `threads`: onnxruntime intra-op threads.
    Safe to call from several threads: each call works on one snapshot of the store.
    """

    def __init__(
        self,
        bundle: NewsBundle | str | Path,
        db_path: str | Path,
        threads: int = 1,
        max_history: int | None = None,
    ) -> None:
        if not isinstance(bundle, NewsBundle):
            bundle = load_news_bundle(bundle)
        self.bundle = bundle
        self.max_history = (
            bundle.max_history if max_history is None else _check_count(max_history, "max_history")
        )
        self.encoders = NewsEncoders(bundle, threads)
        self.store = ItemStore(bundle, db_path, self.encoders)

    def _history(self, snap: _Snapshot, history: Iterable[str]) -> tuple[list, list, list]:
        """(the known clicks the user vector uses, unknown ids, every known click)."""
        if isinstance(history, str | bytes):
            raise TypeError("history must be a sequence of item ids, not a single string")
        known, unknown = [], []
        for item_id in history:
            (known if item_id in snap.row else unknown).append(item_id)
        return known[-self.max_history :], unknown, known

    def _user(self, snap: _Snapshot, used: list[str]) -> np.ndarray:
        return self.encoders.user_vector(snap.matrix[[snap.row[i] for i in used]])

    def user_vector(self, history_item_ids: Iterable[str]) -> np.ndarray:
        """The user vector [dim] of the clicked items (oldest first; unknown ids left out,
        the last `max_history` kept; none: the model's cold-start vector)."""
        snap = self.store.snapshot
        used, _, _ = self._history(snap, history_item_ids)
        return self._user(snap, used)

    def scores(self, history: Iterable[str], candidates: Sequence[str]) -> np.ndarray:
        """Model scores (user . item) of `candidates`, in their order (NaN where unknown)."""
        snap = self.store.snapshot
        used, _, _ = self._history(snap, history)
        user = self._user(snap, used)
        out = np.full(len(candidates), np.nan, dtype=np.float32)
        found = [(k, snap.row[c]) for k, c in enumerate(candidates) if c in snap.row]
        if found:
            pos, rows = zip(*found, strict=True)
            out[list(pos)] = snap.matrix[list(rows)] @ user
        return out

    def rank(
        self,
        history: Iterable[str],
        candidates: Sequence[str] | None = None,
        top_k: int | None = 10,
        *,
        clicks: Mapping[str, float] | None = None,
        published: Mapping[str, float] | None = None,
        now: float | None = None,
        half_life_hours: float = 24.0,
        exclude_history: bool = True,
    ) -> Ranking:
        """The `top_k` best of `candidates` (all with None; default candidates: every item in
        the store, minus every clicked one when `exclude_history`) for a reader who clicked
        `history` (item ids, oldest first).

        Model: user vector of the last `max_history` known clicks, score = its dot product with
        each candidate's cached vector. Cold start -- no known click -- with `clicks` given
        (item id -> click count, e.g. over every reader of this device): popular-and-recent,
        score ``clicks * 0.5 ** (age / half_life)`` with the age from `published` (item id ->
        unix time; an item without one does not decay), ties broken newer first, then by id.
        Without `clicks` an empty history gets the model's learned cold-start vector.
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise TypeError(f"top_k must be an integer or None; got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        snap = self.store.snapshot
        used, unknown, clicked = self._history(snap, history)
        if candidates is None:
            skip = {snap.row[i] for i in clicked} if exclude_history else set()
            rows = (
                None
                if not skip
                else np.array([r for r in range(len(snap.ids)) if r not in skip], dtype=np.int64)
            )
        else:
            if isinstance(candidates, str | bytes):
                raise TypeError("candidates must be a sequence of item ids, not a single string")
            get = snap.row.get
            found = [get(c) for c in candidates]
            unknown += [c for c, r in zip(candidates, found, strict=True) if r is None]
            rows = np.fromiter((r for r in found if r is not None), dtype=np.int64)
        n = len(snap.ids) if rows is None else len(rows)
        k = n if top_k is None else min(top_k, n)

        if not used and clicks is not None:
            ids = snap.ids if rows is None else [snap.ids[r] for r in rows]
            ranked = _popular(ids, clicks, published, now, half_life_hours)[:k]
            items = [_ranked(snap, i, s) for i, s in ranked]
            return Ranking(items, "popular", [], unknown)

        user = self._user(snap, used)
        scores = snap.matrix @ user if rows is None else snap.matrix[rows] @ user
        top = _top(scores, k)
        picked = top if rows is None else rows[top]
        items = [
            _ranked(snap, snap.ids[r], float(scores[t])) for r, t in zip(picked, top, strict=True)
        ]
        return Ranking(items, "model", used, unknown)

    def why(self, item_id: str, history: Iterable[str], top_n: int = 3) -> list[tuple[str, float]]:
        """The clicked items most like `item_id`: (item id, cosine similarity of the item
        vectors), most similar first, at most `top_n`; the item itself and unknown ids are left
        out. KeyError if the store does not know `item_id`."""
        _check_count(top_n, "top_n")
        snap = self.store.snapshot
        target = snap.row[item_id]
        seen = list(dict.fromkeys(i for i in history if i in snap.row and i != item_id))
        if not seen:
            return []
        rows = [snap.row[i] for i in seen]
        dots = snap.matrix[rows] @ snap.matrix[target]
        denom = np.maximum(snap.norms[rows] * snap.norms[target], np.float32(1e-12))
        cos = (dots / denom).astype(np.float64)
        return [(seen[j], float(cos[j])) for j in _top(cos, min(top_n, len(rows)))]

    def close(self) -> None:
        self.store.close()


def _ranked(snap: _Snapshot, item_id: str, score: float) -> RankedItem:
    item = snap.items[item_id]
    return RankedItem(item_id, score, item.title, item.category)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _popular(
    ids: Sequence[str],
    clicks: Mapping[str, float],
    published: Mapping[str, float] | None,
    now: float | None,
    half_life_hours: float,
) -> list[tuple[str, float]]:
    """(item id, score) best first: clicks decayed by age, then newer, then id."""
    if not half_life_hours > 0:
        raise ValueError(f"half_life_hours must be > 0; got {half_life_hours}")
    published = published or {}
    now = time.time() if now is None else now
    half_life = half_life_hours * 3600.0
    rows = []
    for i in ids:
        count = float(clicks.get(i, 0.0))
        when = published.get(i)
        if when is not None:
            count *= 0.5 ** (max(0.0, now - when) / half_life)
        rows.append((-count, -(when if when is not None else -math.inf), i))
    rows.sort()
    return [(i, -c) for c, _, i in rows]
