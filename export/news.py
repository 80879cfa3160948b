"""A finished news run -> two int8 ONNX graphs + the tokenizer as data -> a news bundle.

`export_news_run(run_dir, out_dir)` takes the KD student of a `distill.news_run.run_news` folder
and writes the directory the app reads with `app.news_runtime.load_news_bundle`:

```
manifest.json  item_encoder.int8.onnx  user_encoder.int8.onnx  pieces.json  catalog.json.gz
card.md
```

Graph contracts (dynamic axes are checked to be symbolic `dim_param`s in the written graphs):

    item encoder   tokens [items, tokens] int64 (0 = pad)          -> item_vectors [items, dim]
    user encoder   history_vecs [batch, history, dim] float32,
                   history_mask [batch, history] float32 (1 = real) -> user_vectors [batch, dim]

The click score is ``user . item``. Both graphs go through the dynamo exporter at opset 18
(`export.onnx.OPSET`) and are quantized with `export.quantize.quantize` (dynamic int8, a named
preset).

`pieces.json` ("pocketrec-news-pieces/1") is what the app needs to turn a title into the
student's piece ids without transformers: the student's compact vocabulary (piece -> id), the
number of title tokens kept, the text template ("category: title"), and the teacher tokenizer
as data -- its normalizer steps, pre-tokenizer, model (WordPiece or WordLevel) with the whole
piece vocabulary, and its special tokens. The whole vocabulary, not only the pieces the catalog
uses: greedy longest-match WordPiece segments a new word differently when pieces are missing, so
a restricted vocabulary reproduces the training ids of the catalog but not of new titles.
`catalog.json.gz` maps item id -> {title, category, clicks, seen}: `clicks` (positive labels in
the training and validation impressions) and `seen` (unix time first seen) feed the app's
popular-and-recent cold start, with the clock and half-life in the manifest's `cold_start`.
The export never imports the app, so it does not run the app's tokenizer: its agreement with
the Hugging Face tokenizer is checked by tests/test_news_export.py and bench/news_ranking.py.

Parity gates (`ParityError` from `export.parity` when one fails; nothing is written then):

- torch vs fp32 ONNX, each encoder: max |diff| <= 1e-4 on the catalog's titles, on odd shapes
  (one item, one piece) and on the test impressions' histories (empty ones included);
- int8 vs fp32 on the held-out test impressions, computed the way the app computes (one item or
  one user per call, no padding; dynamic quantization scales activations per call, so padding
  and batch neighbours would change the numbers): |delta AUC| <= 0.01 (`distill.metrics`) and a
  mean top-5 overlap >= 0.9 of each test user's ranking of the whole catalog;
- both int8 graphs really compute in 8 bits (`export.parity.check_integer_ops`).

The bundle is written into a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import BUNDLE_FORMAT, install_dir, sha256_file, write_json
from export.onnx import ExportError

__all__ = [
    "CATALOG_FILE",
    "DOMAIN",
    "ITEM_FILE",
    "ITEM_INPUTS",
    "ITEM_OUTPUTS",
    "PIECES_FILE",
    "PIECES_FORMAT",
    "USER_FILE",
    "USER_INPUTS",
    "USER_OUTPUTS",
    "catalog_activity",
    "check_encoder_graph",
    "cold_start_settings",
    "export_item_encoder",
    "export_news_run",
    "export_user_encoder",
    "pieces_document",
    "tokenizer_spec",
]

DOMAIN = "news"
ITEM_FILE = "item_encoder.int8.onnx"
USER_FILE = "user_encoder.int8.onnx"
PIECES_FILE = "pieces.json"
CATALOG_FILE = "catalog.json.gz"
CARD_FILE = "card.md"
PIECES_FORMAT = "pocketrec-news-pieces/1"
TEXT_TEMPLATE = "category: title"

ITEM_INPUTS = ("tokens",)
ITEM_OUTPUTS = ("item_vectors",)
USER_INPUTS = ("history_vecs", "history_mask")
USER_OUTPUTS = ("user_vectors",)

TORCH_ATOL = 1e-4
MAX_DELTA_AUC = 0.01
MIN_TOP5_OVERLAP = 0.9
TOP_K = 5


def _log(msg: str) -> None:
    print(f"[pocketrec export] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tokenizer as data


def _normalizer_steps(node: Any) -> list[str]:
    """The tokenizers normalizer JSON -> the steps `app.news_runtime` knows, in order."""
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
    "Whitespace": "whitespace",
    "WhitespaceSplit": "whitespace_split",
}


def tokenizer_spec(tokenizer: Any) -> dict:
    """The Hugging Face fast tokenizer `tokenizer` as data the app's tokenizer runs on.

    Supported: a BertNormalizer / Lowercase normalizer (or none, or a sequence of those), a
    BertPreTokenizer / Whitespace / WhitespaceSplit pre-tokenizer and a WordPiece or WordLevel
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
        raise ExportError(f"tokenizer pre-tokenizer {pre_kind!r} is not supported")
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


# --------------------------------------------------------------------------- ONNX graphs


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    out: list = []
    for d in shape.dim:
        if d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        elif d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(None)
    return out


def check_encoder_graph(model, inputs: dict, outputs: dict) -> dict[str, str]:
    """Raise `ExportError` unless the graph has exactly these inputs/outputs and axes.

    `inputs` / `outputs`: name -> axes, in graph order; an axis is a symbol name (the graph
    must have a `dim_param` there, one and the same `dim_param` wherever the symbol appears)
    or an int (the graph must have that fixed size). Returns symbol -> the graph's dim_param.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    for kind, want, got in (
        ("inputs", inputs, graph.input),
        ("outputs", outputs, graph.output),
    ):
        names = tuple(v.name for v in got)
        if names != tuple(want):
            raise ExportError(f"graph {kind} are {names}, expected {tuple(want)}")
    symbols: dict[str, set] = {}
    problems = []
    for vi in (*graph.input, *graph.output):
        axes = inputs.get(vi.name) or outputs.get(vi.name)
        dims = _dims(vi)
        if len(dims) != len(axes):
            raise ExportError(f"{vi.name!r} has rank {len(dims)} ({dims}), expected {axes}")
        for axis, (dim, sym) in enumerate(zip(dims, axes, strict=True)):
            if isinstance(sym, str):
                if not isinstance(dim, str):
                    problems.append(f"{vi.name!r} axis {axis} ({sym}) is fixed at {dim}")
                else:
                    symbols.setdefault(sym, set()).add(dim)
            elif dim != sym:
                problems.append(f"{vi.name!r} axis {axis} is {dim}, expected {sym}")
    if problems:
        raise ExportError("axes break the contract: " + "; ".join(problems))
    split = {s: sorted(v) for s, v in symbols.items() if len(v) != 1}
    if split:
        raise ExportError(f"one axis has different symbols across the graph: {split}")
    return {s: next(iter(v)) for s, v in symbols.items()}


def _export_graph(
    module,
    args: tuple,
    path: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_shapes: tuple,
    axes: tuple[dict, dict],
    meta: dict[str, str],
) -> dict:
    """Trace `module` on `args` to `path` with the encoder contract `axes` checked
    (`export.onnx.write_graph`); -> describe, plus the axes' symbols."""
    import torch

    from export.onnx import describe, write_graph

    stripped, symbols = write_graph(
        module,
        args,
        path,
        names,
        dynamic_shapes,
        lambda proto: check_encoder_graph(proto, *axes),
        meta,
    )
    info = describe(path)
    info["torch"] = torch.__version__
    info["debug_bytes_stripped"] = stripped
    info["symbols"] = symbols
    return info


def export_item_encoder(encoder, path: Path, config) -> dict:
    """The item encoder as ONNX: tokens [items, tokens] int64 -> item_vectors [items, dim]."""
    import torch
    from torch.export import Dim

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, config.vocab_size, (3, 5), generator=g)
    tokens[0, 3:] = 0  # ragged rows, as the catalog has
    tokens[2, 1:] = 0
    axes = ({"tokens": ("items", "tokens")}, {"item_vectors": ("items", config.dim)})
    meta = {
        "pocketrec.format": "pocketrec-news-item-encoder-onnx/1",
        "pocketrec.inputs": ",".join(ITEM_INPUTS),
        "pocketrec.outputs": ",".join(ITEM_OUTPUTS),
        "pocketrec.student_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    return _export_graph(
        encoder,
        (tokens,),
        path,
        (ITEM_INPUTS, ITEM_OUTPUTS),
        ({0: Dim("items"), 1: Dim("tokens")},),
        axes,
        meta,
    )


def export_user_encoder(encoder, path: Path, config) -> dict:
    """The user encoder as ONNX: history_vecs [batch, history, dim], history_mask
    [batch, history] float32 -> user_vectors [batch, dim]."""
    import torch
    from torch.export import Dim

    g = torch.Generator().manual_seed(1)
    vecs = torch.randn(3, 4, config.dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    batch, history = Dim("batch"), Dim("history")
    axes = (
        {
            "history_vecs": ("batch", "history", config.dim),
            "history_mask": ("batch", "history"),
        },
        {"user_vectors": ("batch", config.dim)},
    )
    meta = {
        "pocketrec.format": "pocketrec-news-user-encoder-onnx/1",
        "pocketrec.inputs": ",".join(USER_INPUTS),
        "pocketrec.outputs": ",".join(USER_OUTPUTS),
        "pocketrec.student_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    return _export_graph(
        encoder,
        (vecs, mask),
        path,
        (USER_INPUTS, USER_OUTPUTS),
        ({0: batch, 1: history}, {0: batch, 1: history}),
        axes,
        meta,
    )


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    run_dir: Path
    report: dict
    config: dict
    student: Any
    vocab: Any
    vocab_meta: dict
    catalog: list[str]
    items: dict
    train: list
    val: list
    test: list
    data_folder: Path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected a finished news run)")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_run(run_dir: Path, data_folder: Path | None) -> _Run:
    """Everything the export needs from a `run_news` folder, re-checked against its files."""
    from distill.data.mind import load_mind, time_split
    from distill.news_student import load_news_student, load_piece_vocab

    report = _read_json(run_dir / "report.json")
    if report.get("domain") != DOMAIN:
        raise ValueError(f"{run_dir}: report domain {report.get('domain')!r}, expected 'news'")
    config = _read_json(run_dir / "config.json")
    student = load_news_student(run_dir / "student" / "student_kd.safetensors")
    vocab, meta = load_piece_vocab(run_dir / "student" / "vocab.json")
    if len(vocab) != student.config.vocab_size:
        raise ValueError(
            f"{run_dir}: vocab.json has {len(vocab)} pieces, the student was built for "
            f"{student.config.vocab_size}"
        )
    catalog = _read_json(run_dir / "teacher" / "items.safetensors.json").get("ids") or []
    run_ids = _read_json(run_dir / "teacher" / "users.safetensors.json").get("ids") or []
    folder = Path(data_folder) if data_folder is not None else Path(config["data_folder"])
    data = load_mind(folder)
    impressions = data.impressions
    quick_n = config.get("quick_impressions")
    if config.get("quick") and quick_n and len(impressions) > quick_n:
        # the same seeded subset as distill.news_run
        impressions = random.Random(config["distill"]["seed"]).sample(impressions, quick_n)
    train, val, test = time_split(impressions)
    ids = [imp.impression_id for imp in (*train, *val, *test)]
    if ids != run_ids:
        raise ValueError(
            f"{folder}: its impressions ({len(ids)}) are not the run's ({len(run_ids)}): "
            "pass the data folder the run was made from"
        )
    missing = [i for i in catalog if i not in data.items][:3]
    if not catalog or missing:
        raise ValueError(f"{run_dir}: catalog ids missing from {folder}: {missing}")
    return _Run(
        run_dir, report, config, student, vocab, meta, catalog, data.items, train, val, test, folder
    )


def _hf_tokenizer(backbone: str):
    from transformers import AutoTokenizer

    from distill.teacher import resolve_backbone

    source = resolve_backbone(backbone)
    return AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())


# --------------------------------------------------------------------------- parity


def _ort(path: Path):
    from export.parity import session

    return session(path)


def _item_vectors_batched(sess, tokens: np.ndarray, batch: int = 512) -> np.ndarray:
    parts = [
        sess.run(None, {"tokens": tokens[s : s + batch]})[0] for s in range(0, len(tokens), batch)
    ]
    return np.concatenate(parts).astype(np.float32)


def _trimmed(row: np.ndarray) -> np.ndarray:
    """One item's ids without padding ([1, n]; a single pad for an empty title)."""
    n = int(np.count_nonzero(row))
    return row[None, : max(n, 1)]


def _item_vectors_one_by_one(sess, tokens: np.ndarray) -> np.ndarray:
    """As the app computes them: one item per call, no padding."""
    return np.concatenate([sess.run(None, {"tokens": _trimmed(r)})[0] for r in tokens])


def _users_one_by_one(sess, table: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """As the app computes them: one user per call, the real history only."""
    out = []
    for r, m in zip(rows, mask, strict=True):
        real = r[m > 0]
        if len(real):
            vecs, keep = table[real][None], np.ones((1, len(real)), np.float32)
        else:
            vecs = np.zeros((1, 1, table.shape[1]), np.float32)
            keep = np.zeros((1, 1), np.float32)
        out.append(sess.run(None, {"history_vecs": vecs, "history_mask": keep})[0])
    return np.concatenate(out)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _torch_vs_onnx(student, corpus, fp32_item: Path, fp32_user: Path, test, max_history) -> dict:
    import torch

    from distill.news_teacher import history_rows
    from export.parity import ParityError

    tokens = corpus.tokens[1:]
    isess, usess = _ort(fp32_item), _ort(fp32_user)
    with torch.no_grad():
        want_items = student.item_encoder(torch.from_numpy(tokens)).numpy()
        got_items = _item_vectors_batched(isess, tokens)
        odd = [tokens[:1, :1], _trimmed(tokens[0]), tokens[:7]]
        odd_diff = max(
            _max_diff(
                isess.run(None, {"tokens": t})[0],
                student.item_encoder(torch.from_numpy(t)).numpy(),
            )
            for t in odd
        )
        table = np.concatenate([np.zeros((1, want_items.shape[1]), np.float32), want_items])
        rows, mask = history_rows(test, corpus.index, max_history)
        vecs = table[rows]
        want_users = student.user_encoder(torch.from_numpy(vecs), torch.from_numpy(mask)).numpy()
        got_users = usess.run(None, {"history_vecs": vecs, "history_mask": mask})[0]
        one = (vecs[:1, :1], np.zeros((1, 1), np.float32))  # an empty history, batch 1
        empty_diff = _max_diff(
            usess.run(None, {"history_vecs": one[0], "history_mask": one[1]})[0],
            student.user_encoder(*(torch.from_numpy(a) for a in one)).numpy(),
        )
    report = {
        "check": "torch_vs_onnx",
        "item": {
            "n_items": int(len(tokens)),
            "max_abs_diff": max(_max_diff(got_items, want_items), odd_diff),
        },
        "user": {
            "n_users": int(len(rows)),
            "history_shape": list(vecs.shape),
            "max_abs_diff": max(_max_diff(got_users, want_users), empty_diff),
        },
        "atol": TORCH_ATOL,
    }
    failures = [
        f"{k} encoder max |torch - onnx| {report[k]['max_abs_diff']:.3g} > {TORCH_ATOL:g}"
        for k in ("item", "user")
        if not report[k]["max_abs_diff"] <= TORCH_ATOL
    ]
    report["passed"] = not failures
    if failures:
        raise ParityError("torch_vs_onnx: " + "; ".join(failures), report)
    return report


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row |top-k of a & top-k of b| / k."""
    k = min(k, a.shape[1])
    ta = np.argpartition(-a, k - 1, axis=1)[:, :k]
    tb = np.argpartition(-b, k - 1, axis=1)[:, :k]
    return (ta[:, :, None] == tb[:, None, :]).any(axis=2).sum(axis=1) / k


def _impression_metrics(test, scores: list[np.ndarray]) -> dict:
    from distill.metrics import news_metrics

    return news_metrics((np.asarray(imp.labels), s) for imp, s in zip(test, scores, strict=True))


def _int8_vs_fp32(
    corpus, test, max_history, fp32: tuple[Path, Path], int8: tuple[Path, Path]
) -> dict:
    from distill.news_teacher import history_rows, impression_scores
    from export.parity import ParityError

    tokens = corpus.tokens[1:]
    rows, mask = history_rows(test, corpus.index, max_history)
    tables, users = {}, {}
    for name, (item_path, user_path) in (("fp32", fp32), ("int8", int8)):
        isess, usess = _ort(item_path), _ort(user_path)
        vecs = _item_vectors_one_by_one(isess, tokens)
        tables[name] = np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs])
        users[name] = _users_one_by_one(usess, tables[name], rows, mask)
    metrics, scores = {}, {}
    for name in ("fp32", "int8"):
        scores[name] = impression_scores(tables[name], users[name], test, corpus.index)
        metrics[name] = _impression_metrics(test, scores[name])
    catalog = {n: users[n].astype(np.float64) @ tables[n][1:].T.astype(np.float64) for n in users}
    overlap = _top_overlap(catalog["fp32"], catalog["int8"], TOP_K)
    per_imp = [
        _top_overlap(a[None], b[None], TOP_K)[0]
        for a, b in zip(scores["fp32"], scores["int8"], strict=True)
    ]
    keys = ("auc", "mrr", "ndcg5", "ndcg10")
    report = {
        "check": "int8_vs_fp32",
        "n_impressions": len(test),
        "skipped_impressions": metrics["fp32"]["skipped_impressions"],
        "computed_as": "one item / one user per call, no padding (as app.news_runtime does)",
        "fp32": {k: metrics["fp32"][k] for k in keys},
        "int8": {k: metrics["int8"][k] for k in keys},
        "delta": {k: metrics["int8"][k] - metrics["fp32"][k] for k in keys},
        f"catalog_top{TOP_K}_overlap_mean": float(overlap.mean()),
        f"catalog_top{TOP_K}_overlap_min": float(overlap.min()),
        "catalog_items": int(len(tokens)),
        f"candidate_top{TOP_K}_overlap_mean": float(np.mean(per_imp)),
        "max_abs_diff": {
            "item_vectors": _max_diff(tables["int8"], tables["fp32"]),
            "user_vectors": _max_diff(users["int8"], users["fp32"]),
            "scores": max(
                _max_diff(a, b) for a, b in zip(scores["int8"], scores["fp32"], strict=True)
            ),
        },
        "limits": {
            "max_abs_delta_auc": MAX_DELTA_AUC,
            f"min_catalog_top{TOP_K}_overlap_mean": MIN_TOP5_OVERLAP,
        },
    }
    failures = []
    d = report["delta"]["auc"]
    if not abs(d) <= MAX_DELTA_AUC:
        failures.append(
            f"|delta auc| = {abs(d):.4f} > {MAX_DELTA_AUC:g} "
            f"(fp32 {report['fp32']['auc']:.4f}, int8 {report['int8']['auc']:.4f})"
        )
    if not overlap.mean() >= MIN_TOP5_OVERLAP:
        failures.append(
            f"mean top-{TOP_K} overlap of the catalog ranking = {overlap.mean():.4f} "
            f"< {MIN_TOP5_OVERLAP:g}"
        )
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise ParityError(
            f"int8_vs_fp32 on {len(test)} test impressions: " + "; ".join(failures), report
        )
    return report


def _parity(run: _Run, corpus, max_history: int, paths: dict[str, Path]) -> dict:
    import onnxruntime

    from export.parity import ParityError, check_integer_ops

    out: dict[str, Any] = {"onnxruntime": onnxruntime.__version__}
    checks = (
        (
            "torch_vs_onnx",
            lambda: _torch_vs_onnx(
                run.student, corpus, paths["item_fp32"], paths["user_fp32"], run.test, max_history
            ),
        ),
        (
            "int8_vs_fp32",
            lambda: _int8_vs_fp32(
                corpus,
                run.test,
                max_history,
                (paths["item_fp32"], paths["user_fp32"]),
                (paths["item_int8"], paths["user_int8"]),
            ),
        ),
        ("integer_ops_item", lambda: check_integer_ops(paths["item_int8"])),
        ("integer_ops_user", lambda: check_integer_ops(paths["user_int8"])),
    )
    errors = []
    for name, check in checks:
        try:
            out[name] = check()
        except ParityError as e:
            out[name] = (e.report or {}) | {"passed": False, "error": str(e)}
            errors.append(str(e))
    out["passed"] = not errors
    t, q = out.get("torch_vs_onnx", {}), out.get("int8_vs_fp32", {})
    out["summary"] = {
        "passed": out["passed"],
        "item_torch_vs_onnx_max_abs_diff": t.get("item", {}).get("max_abs_diff"),
        "user_torch_vs_onnx_max_abs_diff": t.get("user", {}).get("max_abs_diff"),
        "int8_delta_auc": q.get("delta", {}).get("auc"),
        "int8_auc": q.get("int8", {}).get("auc"),
        "fp32_auc": q.get("fp32", {}).get("auc"),
        f"int8_catalog_top{TOP_K}_overlap": q.get(f"catalog_top{TOP_K}_overlap_mean"),
        "n_test_impressions": q.get("n_impressions"),
    }
    if errors:
        raise ParityError("news parity failed: " + " | ".join(errors), out)
    return out


# --------------------------------------------------------------------------- bundle


def _model_entry(info: dict, qinfo: dict, file: str) -> dict:
    return {
        "file": file,
        "opset": info["opset"],
        "inputs": [i["name"] for i in info["inputs"]],
        "outputs": [o["name"] for o in info["outputs"]],
        "input_specs": info["inputs"],
        "output_specs": info["outputs"],
        "ops": info.get("ops"),
        "fp32_bytes": info.get("bytes"),
        "quantization": qinfo,
    }


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if isinstance(x, int | float) else "?"


def model_card(manifest: dict) -> str:
    """A short model card for the news bundle."""
    m = manifest
    p = m.get("parity", {}).get("summary", {})
    d = m["data"]
    n = d.get("impressions") or {}
    lines = [
        f"# Model card: {m['name']}",
        "",
        "## What it is",
        f"An NRMS-style news student ({m['params'].get('student', 0):,} parameters; item encoder "
        f"over word pieces, user encoder over the clicked items' vectors, dim "
        f"{m['student_config'].get('dim')}) distilled from the teacher "
        f"`{m['teacher'].get('backbone')}` ({m['params'].get('teacher', 0):,} parameters). It "
        "ranks catalog items for a reader by the dot product of a user vector, computed from "
        f"the last {m['max_history']} clicked items, with each item's vector, computed once "
        f"from `{TEXT_TEMPLATE}` (at most {m['max_tokens']} word pieces).",
        "",
        "## Intended use",
        "A private, offline reading feed: suggestions to browse, ranked on the device. It knows "
        "titles and categories only, not the articles, not their truth, and not what is "
        "important; it learns the reader's past clicks and will repeat their tastes back.",
        "",
        "## Data",
        f"Source `{d.get('source')}`, protocol `{d.get('protocol')}` (train on the earlier "
        f"impressions, test on the latest): {n.get('train')} train, {n.get('val')} validation "
        f"and {n.get('test')} test impressions; catalog of {d.get('catalog_items')} items"
        + (f" ({d['quick']})" if d.get("quick") else "")
        + ".",
        "",
        "## Metrics (test impressions; ± std over bootstrap resamples)",
        "",
        "| model | auc | mrr | ndcg5 | ndcg10 |",
        "|---|---|---|---|---|",
    ]
    for name, v in m.get("metrics", {}).items():
        cells = [
            f"{_fmt(v.get(k))} ± {_fmt(v.get(k + '_std', 0))}"
            for k in ("auc", "mrr", "ndcg5", "ndcg10")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Export",
        f"Two ONNX graphs (opset {m['models']['item']['opset']}), int8 preset "
        f"`{m['models']['item']['quantization'].get('name')}`. Parity: item encoder torch vs "
        f"fp32 ONNX max |diff| {_fmt(p.get('item_torch_vs_onnx_max_abs_diff'), '.2g')}, user "
        f"encoder {_fmt(p.get('user_torch_vs_onnx_max_abs_diff'), '.2g')}; int8 vs fp32 on "
        f"{p.get('n_test_impressions')} test impressions: AUC {_fmt(p.get('int8_auc'))} vs "
        f"{_fmt(p.get('fp32_auc'))}, mean top-{TOP_K} overlap of the catalog ranking "
        f"{_fmt(p.get(f'int8_catalog_top{TOP_K}_overlap'), '.3f')}.",
        "",
        "## Known limits",
        "- The catalog is what the bundle was built on; new items are encoded on the device "
        "from their title and category, and words the teacher's tokenizer splits into pieces "
        "the catalog never used become unknown pieces.",
        "- An empty history falls back to popularity and recency (clicks the app counts), or "
        "to the model's learned start vector when no counts are given.",
        "- Small, quick training runs: compare with the popularity baseline above before "
        "trusting the ranking.",
        "",
    ]
    return "\n".join(lines)


def _unix(canonical: str) -> int:
    """'2019-11-11 09:05:58' (UTC, as `distill.data.mind` keeps times) -> unix seconds."""
    when = dt.datetime.strptime(canonical, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def catalog_activity(
    impressions: list, catalog: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """What the app's cold start needs from the data before the test period: per catalog item,
    its clicks (positive labels) and the unix time it was first seen (in a history or among
    the candidates of an impression at that impression's time). Test impressions are left out
    so that the shipped popularity never saw them."""
    wanted = set(catalog)
    clicks: dict[str, int] = {}
    seen: dict[str, int] = {}
    for imp in impressions:
        when = _unix(imp.time)
        for item_id in (*imp.history, *imp.candidates):
            if item_id in wanted and when < seen.get(item_id, when + 1):
                seen[item_id] = when
        for item_id, label in zip(imp.candidates, imp.labels, strict=True):
            if label == 1 and item_id in wanted:
                clicks[item_id] = clicks.get(item_id, 0) + 1
    return clicks, seen


def cold_start_settings(seen: dict[str, int]) -> dict:
    """The clock and half-life of the app's popular-and-recent fallback. The catalog's clock
    stops at its latest item, not at the device's today (a catalog from 2018 would otherwise
    decay to nothing), and the half-life is a tenth of the catalog's time span (a few days for
    MIND's six weeks, about two years for MovieLens' two decades)."""
    if not seen:
        return {"now": None, "half_life_hours": 24.0}
    first, last = min(seen.values()), max(seen.values())
    half_life = max(1.0, (last - first) / 10 / 3600)
    return {"now": last, "half_life_hours": round(half_life, 1)}


def _write_dir(out_dir: Path, files: dict[str, Path], documents: dict, manifest: dict) -> None:
    """Copy/write everything into a temp sibling of `out_dir`, hash it, rename into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        write_json(tmp / PIECES_FILE, documents["pieces"])
        raw = json.dumps(documents["catalog"], separators=(",", ":"), ensure_ascii=False)
        (tmp / CATALOG_FILE).write_bytes(gzip.compress(raw.encode("utf-8"), mtime=0))
        (tmp / CARD_FILE).write_text(model_card(manifest), encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest["files"] = {n: sha256_file(tmp / n) for n in names}
        manifest["size_bytes"] = {n: (tmp / n).stat().st_size for n in names}
        write_json(tmp / "manifest.json", manifest, compact=False)
        install_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_news_run(
    run_dir: str | Path,
    out_dir: str | Path,
    preset: str = "avx2",
    force: bool = False,
    *,
    data_folder: str | Path | None = None,
    name: str | None = None,
) -> dict:
    """Export the KD student of the `run_news` folder `run_dir` as a news bundle in `out_dir`.

    `preset`: an `export.quantize.PRESETS` name. Refuses a non-empty `out_dir` unless `force`.
    `data_folder`: the MIND folder the run read (default: the one its config.json names, or,
    for a run on the embedded `movielens-demo` source, a fresh conversion of it); the test
    impressions for the parity checks are rebuilt from it and must be the run's. Raises
    `ExportError` (graph contract, unsupported tokenizer), `ParityError` (a gate failed) or
    `ValueError` / `FileNotFoundError` (not a usable run); nothing is written then. Returns the
    bundle's manifest.
    """
    from export.quantize import PRESETS

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "report.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no report.json (expected a finished news run)")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True to replace it")
    config = _read_json(run_dir / "config.json")
    source = config.get("source")
    if data_folder is not None or Path(config["data_folder"]).is_dir() or source is None:
        label = name or (f"news-{source}" if source else None)
        return _export_news_run(run_dir, out_dir, preset, data_folder, label)
    from distill.data.movielens import DEMO_SOURCE, demo_mind

    if source != DEMO_SOURCE:
        raise FileNotFoundError(
            f"{config['data_folder']}: the data the run read is gone; pass its MIND folder"
        )
    with tempfile.TemporaryDirectory(prefix="pocketrec-movielens-mind-") as tmp:
        _log(f"rebuilding the {source} impressions the run read (deterministic conversion)")
        demo_mind(Path(tmp))
        return _export_news_run(run_dir, out_dir, preset, Path(tmp), name or f"news-{source}")


def _export_news_run(
    run_dir: Path, out_dir: Path, preset: str, data_folder: Path | None, name: str | None
) -> dict:
    from distill.news_student import build_piece_vocab
    from distill.news_teacher import item_text
    from distill.news_train import NewsCorpus
    from export.quantize import PRESETS, quantize

    run = _load_run(run_dir, data_folder)
    backbone = run.config["teacher"]["backbone"]
    max_tokens = int(run.vocab_meta["max_tokens"])
    max_history = int(run.config["distill"]["max_history"])
    hf = _hf_tokenizer(backbone)
    texts = [item_text(run.items[i]) for i in run.catalog]
    if build_piece_vocab(texts, hf.tokenize) != run.vocab:
        raise ExportError(
            f"the tokenizer of {backbone!r} no longer gives the run's piece vocabulary"
        )
    spec = tokenizer_spec(hf)
    corpus = NewsCorpus.build(run.items, run.catalog, hf.tokenize, run.vocab, max_tokens)
    scfg = run.student.config
    _log(f"{run_dir}: {len(run.catalog)} catalog items, {len(run.vocab)} pieces, dim {scfg.dim}")

    with tempfile.TemporaryDirectory(prefix="pocketrec-news-export-") as tmpname:
        tmp = Path(tmpname)
        paths = {
            "item_fp32": tmp / "item_encoder.fp32.onnx",
            "user_fp32": tmp / "user_encoder.fp32.onnx",
            "item_int8": tmp / ITEM_FILE,
            "user_int8": tmp / USER_FILE,
        }
        item_info = export_item_encoder(run.student.item_encoder, paths["item_fp32"], scfg)
        user_info = export_user_encoder(run.student.user_encoder, paths["user_fp32"], scfg)
        item_q = quantize(paths["item_fp32"], paths["item_int8"], PRESETS[preset])
        user_q = quantize(paths["user_fp32"], paths["user_int8"], PRESETS[preset])
        parity = _parity(run, corpus, max_history, paths)
        s = parity["summary"]
        _log(
            f"parity: torch vs onnx {s['item_torch_vs_onnx_max_abs_diff']:.2g} / "
            f"{s['user_torch_vs_onnx_max_abs_diff']:.2g}, int8 delta auc "
            f"{s['int8_delta_auc']:+.4f}, catalog top-{TOP_K} overlap "
            f"{s[f'int8_catalog_top{TOP_K}_overlap']:.3f}"
        )

        report = run.report
        manifest = {
            "format": BUNDLE_FORMAT,
            "domain": DOMAIN,
            "name": name or f"news-{run.data_folder.name}",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "models": {
                "item": _model_entry(item_info, item_q, ITEM_FILE),
                "user": _model_entry(user_info, user_q, USER_FILE),
            },
            "pieces": PIECES_FILE,
            "catalog": CATALOG_FILE,
            "text": TEXT_TEMPLATE,
            "max_tokens": max_tokens,
            "max_history": max_history,
            "score": "dot(user_vector, item_vector)",
            "student_config": scfg.to_dict(),
            "metrics": report["models"],
            "params": report.get("params", {}),
            "teacher": report.get("teacher", {}),
            "data": {
                "source": report.get("source"),
                "protocol": report.get("protocol"),
                "impressions": report.get("impressions"),
                "catalog_items": len(run.catalog),
                "quick": report.get("quick"),
            },
            "parity": parity,
        }
        pieces = pieces_document(spec, run.vocab, max_tokens, backbone)
        clicks, seen = catalog_activity([*run.train, *run.val], run.catalog)
        catalog = {}
        for i in run.catalog:
            row = {"title": run.items[i].title, "category": run.items[i].category}
            if clicks.get(i):
                row["clicks"] = clicks[i]
            if i in seen:
                row["seen"] = seen[i]
            catalog[i] = row
        manifest["cold_start"] = cold_start_settings(seen)
        _write_dir(
            out_dir,
            {ITEM_FILE: paths["item_int8"], USER_FILE: paths["user_int8"]},
            {"pieces": pieces, "catalog": catalog},
            manifest,
        )
    _log(f"news bundle written to {out_dir} ({sum(manifest['size_bytes'].values()):,} bytes)")
    return manifest
