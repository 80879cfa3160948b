"""The teacher's tokenizer as data: `pieces.json` of the news bundle.

`pieces.json` ("pocketrec-news-pieces/1") is what the app needs to turn a title into the
student's piece ids without transformers: the student's compact vocabulary (piece -> id), the
number of title tokens kept, the text template ("category: title"), and the teacher tokenizer
as data -- its normalizer steps, pre-tokenizer, model (WordPiece or WordLevel) with the whole
piece vocabulary, and its special tokens. The whole vocabulary, not only the pieces the catalog
uses: greedy longest-match WordPiece segments a new word differently when pieces are missing, so
a restricted vocabulary reproduces the training ids of the catalog but not of new titles.
The export never imports the app, so it does not run the app's tokenizer: its agreement with
the Hugging Face tokenizer is checked by tests/test_news_export.py and bench/news_ranking.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contract.bundle import PIECES_FORMAT
from distill.news.pieces import TEXT_TEMPLATE
from export.onnx import ExportError

__all__ = ["hf_tokenizer", "pieces_document", "tokenizer_spec"]


def _normalizer_steps(node: Any) -> list[str]:
    """The tokenizers normalizer JSON -> the steps `app.news.tokenizer` knows, in order."""
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [s for sub in node.get("normalizers", []) for s in _normalizer_steps(sub)]
    if kind == "Lowercase":
        return ["lowercase"]
    if kind == "BertNormalizer":
        steps = []
        if node.get("clean_text", True):
            steps.append("clean_text")
        if node.get("handle_chinese_chars", True):
            steps.append("chinese_chars")
        lowercase = bool(node.get("lowercase", True))
        strip = node.get("strip_accents")
        if lowercase if strip is None else bool(strip):
            steps.append("strip_accents")
        if lowercase:
            steps.append("lowercase")
        return steps
    raise ExportError(f"tokenizer normalizer {kind!r} is not supported by the app's tokenizer")


_PRE_TOKENIZERS = {
    "BertPreTokenizer": "bert",
    "WhitespaceSplit": "whitespace_split",
}
# why a pre-tokenizer is refused, where there is more to say than "not supported": Whitespace's
# word class is the regex crate's Unicode \w (Alphabetic, marks, decimal digits, connector
# punctuation); Python's differs on about 13,000 code points (marks, other numbers such as "²",
# U+001C..U+001F), so the app's fallback would split titles differently from training wherever
# the tokenizers library is missing
_REFUSED_BECAUSE = {
    "Whitespace": ": the app's pure-Python fallback cannot reproduce its word class (use "
    "BertPreTokenizer or WhitespaceSplit)",
}


def tokenizer_spec(tokenizer: Any) -> dict:
    """The Hugging Face fast tokenizer `tokenizer` as data the app's tokenizer runs on.

    Supported: a BertNormalizer / Lowercase normalizer (or none, or a sequence of those), a
    BertPreTokenizer / WhitespaceSplit pre-tokenizer and a WordPiece or WordLevel
    model; added tokens must be matched on the raw text (``normalized`` false) and anywhere
    (``single_word`` false), as BERT's special tokens are. Anything else raises `ExportError`.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; "
            "the news bundle describes the tokenizer from its tokenizer.json"
        )
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    kind = model.get("type")
    vocab = model.get("vocab")
    if kind not in ("WordPiece", "WordLevel") or not isinstance(vocab, dict):
        raise ExportError(f"tokenizer model {kind!r} is not supported (WordPiece or WordLevel)")
    pre = data.get("pre_tokenizer")
    pre_kind = (pre or {}).get("type")
    if pre_kind not in _PRE_TOKENIZERS:
        why = _REFUSED_BECAUSE.get(pre_kind, "")
        raise ExportError(f"tokenizer pre-tokenizer {pre_kind!r} is not supported{why}")
    specials = []
    for tok in data.get("added_tokens") or []:
        if tok.get("normalized") or tok.get("single_word"):
            raise ExportError(
                f"added token {tok.get('content')!r} is matched after normalization or as a "
                "single word; the app's tokenizer matches added tokens on the raw text only"
            )
        specials.append(tok["content"])
    pieces = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    spec_model: dict[str, Any] = {
        "type": kind.lower(),
        "unk_token": model.get("unk_token"),
        "vocab": pieces,
    }
    if kind == "WordPiece":
        spec_model["continuing_subword_prefix"] = model.get("continuing_subword_prefix", "##")
        spec_model["max_input_chars_per_word"] = int(model.get("max_input_chars_per_word", 100))
    return {
        "normalizer": _normalizer_steps(data.get("normalizer")),
        "pre_tokenizer": _PRE_TOKENIZERS[pre_kind],
        "model": spec_model,
        "special_tokens": specials,
    }


def pieces_document(spec: dict, vocab: Any, max_tokens: int, tokenizer_name: str) -> dict:
    """The content of pieces.json: the student's vocabulary plus the tokenizer spec."""
    return {
        "format": PIECES_FORMAT,
        "tokenizer_name": tokenizer_name,
        "text": TEXT_TEMPLATE,
        "max_tokens": int(max_tokens),
        "pieces": vocab.to_json(),
        "tokenizer": spec,
    }


def hf_tokenizer(backbone: str):
    """The teacher's Hugging Face tokenizer, by the backbone name the run's config keeps."""
    from transformers import AutoTokenizer

    from distill.backbone import resolve_backbone

    source = resolve_backbone(backbone)
    return AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
