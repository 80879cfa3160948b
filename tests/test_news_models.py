"""The news teacher and NRMS-style student: shapes, padding invariance, files, learning on
`generate_mind` data, KD, and ONNX export of the two student encoders."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import numpy as np
import pytest
import torch

from distill.data.mind import FILLERS, TOPICS, generate_mind, load_mind, time_split
from distill.news.pieces import (
    NewsCorpus,
    build_piece_vocab,
    encode_texts,
    load_piece_vocab,
    save_piece_vocab,
)
from distill.news.samples import ItemIndex, click_examples, history_rows, item_text
from distill.news.student import (
    ItemEncoder,
    NewsStudent,
    NewsStudentConfig,
    UserEncoder,
    load_news_student,
    save_news_student,
)
from distill.news.teacher import NewsTeacherConfig, load_news_teacher, save_news_teacher
from distill.news.teacher_train import train_news_teacher
from distill.news.train import (
    NewsDistillConfig,
    TeacherTargets,
    student_scores,
    train_news_student,
)
from distill.news.vectors import cache_teacher_vectors, load_teacher_vectors

TINY = NewsStudentConfig(vocab_size=40, dim=16, heads=2, attention_dim=8, teacher_dim=12)


def words(text: str) -> list[str]:
    """A stand-in for a tokenizer's word pieces: lower-case words and punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def build_news_bert(folder: Path) -> str:
    """A 2-layer BERT (hidden 32) whose word-level tokenizer knows every word and mark
    `generate_mind` writes into categories and titles (lower-cased, punctuation split off)."""
    from conftest import save_tiny_bert
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    known = sorted({w for t, ws in TOPICS.items() for w in [t, *ws.split()]} | set(FILLERS))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", ":", '"', *known])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.normalizer = normalizers.Lowercase()
    # BERT's split (white space, then each punctuation mark alone), which the app's fallback
    # reproduces exactly; the export refuses the Whitespace pre-tokenizer, whose word class
    # Python's regex does not share
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return str(save_tiny_bert(folder, raw, len(vocab), max_positions=64))


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    """(items, train, val, test) of a small generated dataset."""
    folder = generate_mind(
        tmp_path_factory.mktemp("mind"), n_users=80, n_items=120, n_impressions=900, seed=1
    )
    data = load_mind(folder)
    return (data.items, *time_split(data.impressions))


@pytest.fixture(scope="module")
def news_bert(tmp_path_factory) -> str:
    return build_news_bert(tmp_path_factory.mktemp("news_bert"))


def _corpus(items, max_tokens=12):
    ids = sorted(items)
    vocab = build_piece_vocab((item_text(items[i]) for i in ids), words)
    return NewsCorpus.build(items, ids, words, vocab, max_tokens), vocab


# --------------------------------------------------------------------------- student modules


def test_shapes_and_scores():
    torch.manual_seed(0)
    model = NewsStudent(TINY).eval()
    tokens = torch.randint(0, TINY.vocab_size, (5, 7))
    assert model.item_encoder(tokens).shape == (5, TINY.dim)
    hist = torch.randn(3, 4, TINY.dim)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    users = model.user_encoder(hist, mask)
    assert users.shape == (3, TINY.dim) and torch.isfinite(users).all()  # empty history too
    cands = torch.randint(1, TINY.vocab_size, (3, 5, 6))
    history = torch.randint(0, TINY.vocab_size, (3, 4, 6))
    assert model(cands, history, mask).shape == (3, 5)


def test_item_encoder_ignores_padding():
    torch.manual_seed(1)
    enc = ItemEncoder(TINY).eval()
    tokens = torch.randint(1, TINY.vocab_size, (4, 6))
    tokens[0, 3:] = 0  # ragged rows
    tokens[2, 1:] = 0
    padded = torch.cat([tokens, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(enc(tokens), enc(padded), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(enc(torch.zeros(2, 3, dtype=torch.long))).all()  # all-pad rows


def test_user_encoder_ignores_padded_history_slots():
    torch.manual_seed(2)
    enc = UserEncoder(TINY).eval()
    hist = torch.randn(3, 4, TINY.dim)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    base = enc(hist, mask)
    junk = torch.randn(3, 6, TINY.dim) * 50  # whatever sits in padded slots must not matter
    hist2 = torch.cat([hist, junk], dim=1)
    mask2 = torch.cat([mask, torch.zeros(3, 6)], dim=1)
    hist2[0, 3] = 99.0
    torch.testing.assert_close(enc(hist2, mask2), base, atol=1e-5, rtol=1e-5)


def test_config_checks_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        NewsStudentConfig(vocab_size=10, dim=10, heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        NewsStudentConfig(vocab_size=1)
    with pytest.raises(ValueError, match="unknown"):
        NewsStudentConfig.from_dict({"vocab_size": 10, "colour": 1})
    torch.manual_seed(3)
    model = NewsStudent(TINY)
    path = tmp_path / "s.safetensors"
    save_news_student(model, path)
    again = load_news_student(path)
    assert again.config == TINY and not again.training
    model.eval()
    tokens = torch.randint(0, TINY.vocab_size, (3, 5))
    torch.testing.assert_close(again.item_encoder(tokens), model.item_encoder(tokens))
    hist, mask = torch.randn(2, 3, TINY.dim), torch.ones(2, 3)
    torch.testing.assert_close(again.user_encoder(hist, mask), model.user_encoder(hist, mask))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_piece_vocab_is_compact_and_round_trips(tmp_path):
    texts = ["sports: Big match", "finance: Big market"]
    vocab = build_piece_vocab(texts, words)
    assert vocab.tokens[:2] == ("<pad>", "<unk>")
    assert set(vocab.tokens[2:]) == {"sports", "finance", ":", "big", "match", "market"}
    assert vocab.tokens[2:4] == (":", "big")  # most frequent first
    ids = encode_texts(["big goal match", "x"], words, vocab, 4)
    assert ids.tolist() == [[vocab.id("big"), 1, vocab.id("match"), 0], [1, 0, 0, 0]]
    save_piece_vocab(vocab, tmp_path / "vocab.json", tokenizer="words")
    again, meta = load_piece_vocab(tmp_path / "vocab.json")
    assert again == vocab and meta == {"tokenizer": "words"}


def test_examples_and_histories():
    index = ItemIndex(["a", "b", "c", "d"])

    class Imp:
        def __init__(self, history, candidates, labels):
            self.history, self.candidates, self.labels = history, candidates, labels

    imps = [Imp(("a", "zz", "b", "c"), ("a", "b", "c"), (1, 0, 1)), Imp((), ("d", "a"), (0, 0))]
    rows, mask = history_rows(imps, index, max_history=2)
    assert rows.tolist() == [[2, 3], [0, 0]] and mask.tolist() == [[1, 1], [0, 0]]
    owner, cands = click_examples(imps, index, 3, np.random.default_rng(0))
    assert owner.tolist() == [0, 0]
    assert cands[:, 0].tolist() == [1, 3] and set(cands[:, 1:].ravel()) == {2}


# --------------------------------------------------------------------------- training


def test_student_learns_the_generated_data(news):
    items, train, val, _ = news
    corpus, vocab = _corpus(items)
    cfg = NewsDistillConfig(alpha=0.0, epochs=3, patience=3, lr=3e-3, max_history=20)
    scfg = NewsStudentConfig(vocab_size=len(vocab), dim=32, heads=2, attention_dim=32)
    result = train_news_student(corpus, train, val, scfg, cfg, log=None)
    assert result.best_val_auc > 0.7, result.history
    assert result.projectors is None
    scores = student_scores(result.model, corpus, val, cfg.max_history)
    assert [len(s) for s in scores] == [len(imp.candidates) for imp in val]


def _teacher_targets(items, corpus, train, width=12, seed=0):
    """Teacher-like vectors: item = topic direction + a little noise, user = mean of the
    history's item vectors."""
    rng = np.random.default_rng(seed)
    topics = sorted({items[i].category for i in corpus.index.ids})
    direction = rng.normal(size=(len(topics), width))
    t_items = np.stack(
        [direction[topics.index(items[i].category)] for i in corpus.index.ids]
    ) + 0.1 * rng.normal(size=(len(corpus.index), width))
    table = np.concatenate([np.zeros((1, width)), t_items])
    rows, mask = history_rows(train, corpus.index, 20)
    users = (table[rows] * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return TeacherTargets(t_items.astype(np.float32), users.astype(np.float32))


def test_kd_losses_decrease(news):
    items, train, val, _ = news
    corpus, vocab = _corpus(items)
    targets = _teacher_targets(items, corpus, train)
    scfg = NewsStudentConfig(vocab_size=len(vocab), dim=32, heads=2, teacher_dim=12)
    cfg = NewsDistillConfig(alpha=1.0, temperature=2.0, epochs=4, patience=4, max_history=20)
    result = train_news_student(corpus, train, val, scfg, cfg, targets, log=None)
    first, last = result.history[0], result.history[-1]
    for key in ("kd_item", "kd_user", "kd_score"):
        assert np.isfinite(last[key])
    assert last["kd_item"] < first["kd_item"] and last["kd_user"] < first["kd_user"]
    assert set(result.projectors) == {"item", "user"}
    with pytest.raises(ValueError, match="teacher"):
        train_news_student(corpus, train, val, scfg, cfg, None, log=None)


def test_distill_config_checks():
    assert NewsDistillConfig().uses_teacher
    nokd = NewsDistillConfig(temperature=2.0).no_kd()
    assert nokd.alpha == 0 and nokd.temperature is None and not nokd.uses_teacher
    with pytest.raises(ValueError, match="temperature"):
        NewsDistillConfig(temperature=0)
    with pytest.raises(ValueError, match="negatives"):
        NewsDistillConfig(negatives=0)


# --------------------------------------------------------------------------- teacher


def test_frozen_teacher_trains_caches_and_reloads(news, news_bert, tmp_path):
    items, train, val, test = news
    cfg = NewsTeacherConfig(backbone=news_bert, epochs=3, lr=3e-3, attention_dim=16, max_history=20)
    result = train_news_teacher(items, train, val, cfg, log=None)
    assert not any(p.requires_grad for p in result.model.backbone.parameters())
    assert result.item_vectors.shape == (len(items), 32)
    assert result.best_val_auc > 0.6, result.history

    every = [*train, *val, *test]
    items_path, users_path = cache_teacher_vectors(result, every, tmp_path / "cache")
    vecs, ids, info = load_teacher_vectors(items_path)
    assert ids == sorted(items) and info["backbone"] == news_bert and info["dim"] == 32
    np.testing.assert_allclose(vecs, result.item_vectors, atol=2e-2, rtol=1e-2)  # fp16
    some = [test[3].impression_id, train[0].impression_id]
    users, got, _ = load_teacher_vectors(users_path, some)
    assert got == some and users.shape == (2, 32)
    with pytest.raises(KeyError):
        load_teacher_vectors(users_path, ["no such impression"])

    save_news_teacher(result.model, tmp_path / "teacher")
    again = load_news_teacher(tmp_path / "teacher")
    for k, v in result.model.head_state().items():
        torch.testing.assert_close(again.head_state()[k], v)


def test_lora_teacher_trains_adapters_and_reloads(news, news_bert, tmp_path):
    items, train, val, _ = news
    cfg = NewsTeacherConfig(
        backbone=news_bert, lora=True, epochs=1, attention_dim=8, max_history=5, batch_size=64
    )
    result = train_news_teacher(items, train[:120], val[:30], cfg, log=None)
    model = result.model
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora, "LoRA adapters should be trainable"
    assert np.isfinite(result.item_vectors).all() and len(result.history) == 1

    save_news_teacher(model, tmp_path / "teacher")
    assert (tmp_path / "teacher" / "adapter").is_dir()
    again = load_news_teacher(tmp_path / "teacher")
    ids = torch.tensor([[2, 4, 5, 6, 3], [2, 7, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = model.eval().items(model.pooled(ids, mask))
        got = again.items(again.pooled(ids, mask))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_teacher_config_checks():
    assert not NewsTeacherConfig().lora  # frozen LM is the CPU default
    with pytest.raises(ValueError, match="pooling"):
        NewsTeacherConfig(pooling="max")
    with pytest.raises(ValueError, match="negatives"):
        NewsTeacherConfig(negatives=0)
    assert NewsTeacherConfig.from_dict(
        NewsTeacherConfig(lora_targets=["q"]).to_dict()
    ).lora_targets == ("q",)


# --------------------------------------------------------------------------- ONNX


def _export(module, args, names, dynamic, path):
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            input_names=names,
            output_names=["vectors"],
            dynamic_shapes=dynamic,
            opset_version=18,
            verbose=False,
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # the exporter's deprecation and axis-name notes
def test_onnx_export_of_both_encoders(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torch.export import Dim

    torch.manual_seed(4)
    model = NewsStudent(TINY).eval()
    items_path, users_path = tmp_path / "items.onnx", tmp_path / "users.onnx"
    _export(
        model.item_encoder,
        (torch.randint(0, TINY.vocab_size, (3, 5)),),
        ["tokens"],
        ({0: Dim("items"), 1: Dim("tokens")},),
        items_path,
    )
    batch, hist = Dim("batch"), Dim("history")
    _export(
        model.user_encoder,
        (torch.randn(3, 4, TINY.dim), torch.ones(3, 4)),
        ["history_vecs", "history_mask"],
        ({0: batch, 1: hist}, {0: batch, 1: hist}),
        users_path,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.onnx", "users.onnx"]

    sess = ort.InferenceSession(str(items_path), providers=["CPUExecutionProvider"])
    for n, t in ((7, 11), (2, 2), (1, 9)):
        tokens = torch.randint(0, TINY.vocab_size, (n, t))
        tokens[0, t // 2 :] = 0
        (got,) = sess.run(None, {"tokens": tokens.numpy()})
        np.testing.assert_allclose(got, model.item_encoder(tokens).detach().numpy(), atol=1e-4)

    sess = ort.InferenceSession(str(users_path), providers=["CPUExecutionProvider"])
    for b, h in ((5, 9), (2, 2), (1, 1)):
        vecs = torch.randn(b, h, TINY.dim)
        mask = (torch.rand(b, h) > 0.3).float()
        mask[0] = 0.0  # an empty history
        (got,) = sess.run(None, {"history_vecs": vecs.numpy(), "history_mask": mask.numpy()})
        want = model.user_encoder(vecs, mask).detach().numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
