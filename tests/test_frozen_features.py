"""Frozen (label-free) teacher features: a headless `FrozenEncoder`, extracted once, sharded over
processes under torchrun (gloo, 2 CPU processes) with the same result as one process, and the
frozen teacher's own head (`fit_frozen_head`) fit on training rows only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import numpy as np
import pytest

from distill.backbone import TeacherConfig
from distill.features import FrozenEncoder, extract_features, load_features, predict_proba

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"k{j}" for j in range(6)] + [f"w{j}" for j in range(12)]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        "visit " + " ".join(rng.choice(WORDS, size=rng.integers(1, 12)).tolist()) for _ in range(n)
    ]


def _frozen(backbone: str) -> FrozenEncoder:
    return FrozenEncoder.from_config(TeacherConfig(backbone=backbone, max_length=64, frozen=True))


def test_frozen_config_and_encoder(llama_dir):
    assert TeacherConfig(frozen=True).frozen
    with pytest.raises(ValueError, match="frozen"):
        TeacherConfig(frozen=1)
    enc = _frozen(llama_dir)
    assert enc.n_labels == 0 and enc.pooling == "last"
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="no head"):
        predict_proba(enc, enc.tokenizer, ["visit k0"])


def test_frozen_features_have_no_probs(tmp_path, bert_dir):
    enc = _frozen(bert_dir)
    texts = _texts(7)
    ids = [f"s{i}" for i in range(7)]
    path = extract_features(enc, enc.tokenizer, texts, ids, tmp_path / "f.safetensors", 3,
                            shard_size=4)  # fmt: skip
    feats, probs, info = load_features(path, ids)
    assert feats.shape == (7, 32) and probs.shape == (7, 0)
    assert info["frozen"] and info["n_labels"] == 0 and info["world_size"] == 1


@pytest.mark.slow
def test_torchrun_sharded_extraction_equals_one_process(tmp_path, llama_dir):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun next to {sys.executable}")
    texts = _texts(23, seed=3)
    ids = [f"s{i}" for i in range(len(texts))]
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)]
    prompts.write_text("".join(lines))
    out = tmp_path / "sharded.safetensors"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "distill.features",
        "--backbone", llama_dir, "--prompts", str(prompts), "--out", str(out),
        "--max-length", "64", "--batch-size", "3", "--shard-size", "5",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "23 prompts, 2 processes" in log
    assert not out.with_name(out.name + ".shards").exists()  # merged and cleaned up
    got, _, info = load_features(out, ids)
    assert info["world_size"] == 2 and info["frozen"]

    enc = _frozen(llama_dir)
    one = extract_features(enc, enc.tokenizer, texts, ids, tmp_path / "one.safetensors", 3,
                           shard_size=5)  # fmt: skip
    want, _, _ = load_features(one, ids)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_the_frozen_teachers_probe_learns_from_training_rows_only():
    from distill.medication.run import linear_probe
    from distill.metrics import prauc

    rng = np.random.default_rng(0)
    n, h, labels = 120, 16, 5
    x = rng.standard_normal((n, h)).astype(np.float32) * 3 + 1
    w = rng.standard_normal((h, labels))
    y = (x @ w + rng.standard_normal((n, labels)) > 0).astype(np.float32)
    tr, va, te = np.arange(0, 80), np.arange(80, 100), np.arange(100, 120)
    p = linear_probe(x, y, tr, va)
    assert p.shape == (n, labels) and p.dtype == np.float32
    assert prauc(y[te] > 0.5, p[te]) > 0.75  # learnable signal is learnt
    # the test rows' labels play no part: scrambling them changes nothing
    y2 = y.copy()
    y2[te] = 1 - y2[te]
    np.testing.assert_allclose(linear_probe(x, y2, tr, va), p, rtol=1e-5, atol=1e-6)
