"""Title text -> the news student's piece ids, without transformers.

Two implementations of one interface (`pieces`, `max_tokens`, `tokenize`, `encode`,
`encode_item`, `backend`): `LibraryTokenizer` runs the teacher's own `tokenizer.json` (carried
by bundles since issue 14) in Hugging Face's `tokenizers` library, exactly the tokenizer the
training side used, where that library installs (desktop, kiosk); `PieceTokenizer` below is
the pure-Python fallback for platforms without it (and for older bundles without
tokenizer.json). `make_tokenizer` picks one. tests/test_news_export.py checks that the two give
the same pieces on the whole catalog.

The teacher tokenizer is described as data in the bundle's pieces.json (normalizer steps,
pre-tokenizer, WordPiece or WordLevel vocabulary, special tokens) and re-implemented here --
BERT's basic tokenizer (clean-up, CJK spacing, accent stripping, lower-casing, whitespace and
punctuation splitting) and greedy longest-match-first WordPiece. It gives the Hugging Face
tokenizer's pieces for every title of the shipped MovieLens sample (tests/test_news_export.py).
Known gap: character classes come from Python's `unicodedata`, the tokenizers library has older
Unicode tables, so the ~500 code points whose category is newer than those (marks and
punctuation of scripts encoded since about Unicode 10, e.g. Newa, Soyombo, some Arabic marks)
can split differently. WordLevel models run with BERT's pre-tokenizer or WhitespaceSplit (the
tests' tiny teachers). Bundles written before the export refused the Whitespace pre-tokenizer
may name it: that one is run with Python's regex word class, which differs from the library's
on marks and other numbers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from contract.bundle import PIECES_FORMAT, BundleError
from contract.layout import PAD_ID, UNK_ID

PAD, UNK = "<pad>", "<unk>"

__all__ = [
    "LibraryTokenizer",
    "PieceTokenizer",
    "item_text",
    "make_tokenizer",
    "tokenizers_available",
]

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

    backend = "python"

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


# --------------------------------------------------------------------------- the library


def tokenizers_available() -> bool:
    """Whether Hugging Face's `tokenizers` library imports here (optional on the device)."""
    try:
        import tokenizers  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class LibraryTokenizer:
    """The teacher's `tokenizer.json` in the `tokenizers` library, mapped to the student's
    piece ids as `PieceTokenizer` maps them (same `pieces`, `max_tokens`, interface)."""

    backend = "tokenizers"

    def __init__(
        self,
        tokenizer_json: str,
        pieces: Mapping[str, int],
        max_tokens: int,
        name: str = "tokenizer.json",
    ):
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library raises its own exception type
            raise BundleError(f"{name}: the tokenizers library cannot read it ({e})") from e
        tok.no_truncation()
        tok.no_padding()
        # a file that parses but cannot encode (e.g. no unknown token for a word outside its
        # vocabulary) is refused here, once, rather than failing on every title later
        try:
            tok.encode("pocketrec 2019 \U0001f9ff", add_special_tokens=False)
        except Exception as e:
            raise BundleError(
                f"{name}: the tokenizers library cannot tokenize with it ({e})"
            ) from e
        self._tok = tok
        self.pieces = dict(pieces)
        self.max_tokens = max_tokens

    def tokenize(self, text: str) -> list[str]:
        """The pieces the teacher's ``tokenizer.tokenize(text)`` gives."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        get = self.pieces.get
        return [get(p, UNK_ID) for p in self.tokenize(text)[: self.max_tokens]]

    def encode_item(self, title: str, category: str = "") -> list[int]:
        return self.encode(item_text(title, category))


def make_tokenizer(
    pieces_doc: Any,
    tokenizer_json: str | None = None,
    prefer_library: bool = True,
    name: str = "tokenizer.json",
) -> PieceTokenizer | LibraryTokenizer:
    """The bundle's tokenizer: the library one when `tokenizer_json` (the text of the file
    `name`) is given, `prefer_library` and `tokenizers` imports; else the pure-Python one.
    pieces.json is always checked (it holds the student's vocabulary either way). A
    tokenizer.json the installed library cannot read or run gives the fallback too. Which one
    was picked, and why, is logged."""
    import logging

    log = logging.getLogger("pocketrec")
    python = PieceTokenizer.from_document(pieces_doc)
    why = None
    if tokenizer_json is None:
        why = "the bundle has no tokenizer.json"
    elif not prefer_library:
        why = "asked for"
    elif not tokenizers_available():
        why = "the tokenizers library is not installed"
    if why is not None:
        log.info(f"news tokenizer: the pure-Python fallback ({why})")
        return python
    try:
        library = LibraryTokenizer(tokenizer_json, python.pieces, python.max_tokens, name)
    except BundleError as e:
        # the file passed its sha256, so this is a library that reads it differently (an
        # older version): the fallback is the same tokenizer, checked against it at export
        log.warning(f"news tokenizer: the pure-Python fallback, as {e}")
        return python
    log.info(f"news tokenizer: {name} in the tokenizers library")
    return library
