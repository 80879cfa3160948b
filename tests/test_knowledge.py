"""Tests for distill.medication.knowledge: zero-shot class scores of a causal LM per code, on a
tiny Llama made here (the real SmolLM2 is exercised by bench/knowledge_ablation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.medication import knowledge as kn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# class names and titles in the tiny tokenizer's words (tests/conftest.py)
NAMES = {"A01A": "k0 k1", "B01A": "w3", "C03C": "k2 w4 w5"}
LABELS = list(NAMES)
TITLES = {"icd9cm:4019": "k3 w1", "icd9cm:25000": "k4", "icd9pcs:3995": "w2 k5"}


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory) -> str:
    """A 2-layer LlamaForCausalLM with the tiny word tokenizer."""
    from conftest import _word_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_causal")
    _, tok, vocab = _word_tokenizer(
        ["<unk>", "<s>", "</s>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=1, eos_token_id=2)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _brute_force(folder: str, prompt: str, phrase: str) -> float:
    """Mean log-probability of `phrase` after `prompt`, from one plain forward of both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    p = tok(prompt)["input_ids"]
    c = tok(" " + phrase, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)) / len(c))


def test_cached_prompt_scores_equal_a_plain_forward(causal_dir):
    """The prompt's key/value cache reused for every class name (batched by length, padded)
    gives each name's mean log-probability exactly as one forward of prompt + name does."""
    phrases = kn.class_phrases(LABELS, NAMES)
    assert phrases == ["k0 k1", "w3", "k2 w4 w5"]
    scorer = kn.LLMScorer(causal_dir, phrases, dtype="float32", batch_size=2)
    prompts = [kn.code_prompt("diagnoses", "k3 w1"), kn.code_prompt("procedures", "w2 k5")]
    got = scorer.score(prompts)
    assert got.shape == (2, 3) and got.dtype == np.float32
    for i, prompt in enumerate(prompts):
        for j, phrase in enumerate(phrases):
            assert got[i, j] == pytest.approx(_brute_force(causal_dir, prompt, phrase), abs=1e-4)


def test_code_prompt_and_phrases():
    assert kn.code_prompt("diagnoses", "Essential  hypertension.") == (
        "A patient is diagnosed with: Essential hypertension.\nThe drug class prescribed for it is:"
    )
    assert kn.code_prompt("procedures", "Insertion of stent").startswith("A patient undergoes")
    with pytest.raises(ValueError, match="kind must be"):
        kn.code_prompt("medications", "x")
    # WHO names by default, lower case; an unknown class reads as its code
    assert kn.class_phrases(["C03C", "ZZZZ"]) == ["high-ceiling diuretics", "zzzz"]


def test_code_knowledge_is_pmi_against_the_null_prompt_and_cached(causal_dir, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    keys = [("diagnoses", "icd9cm:4019"), ("diagnoses", "icd9cm:25000"),
            ("procedures", "icd9pcs:3995")]  # fmt: skip
    cache = tmp_path / "k.npz"
    table = kn.code_knowledge(keys, TITLES, LABELS, causal_dir, cache, progress=False,
                              names=NAMES)  # fmt: skip
    assert table.shape == (3, 3) and np.isfinite(table).all()
    scorer = kn.LLMScorer(causal_dir, kn.class_phrases(LABELS, NAMES), dtype="float32")
    want = (
        scorer.score([kn.code_prompt("diagnoses", "k4")])[0]
        - scorer.score([kn.code_prompt("diagnoses", kn.NULL_TITLES["diagnoses"])])[0]
    )
    # the cache keeps float16
    np.testing.assert_allclose(table[1], want, atol=2e-3)
    assert cache.is_file() and cache.with_suffix(".json").is_file()

    # a second call scores nothing: every code is in the cache
    def no_scoring(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(kn, "LLMScorer", no_scoring)
    again = kn.code_knowledge(keys[::-1], TITLES, LABELS, causal_dir, cache, progress=False,
                              names=NAMES)  # fmt: skip
    np.testing.assert_array_equal(again, table[::-1])
    # other class names are another scorer: its codes are scored anew
    with pytest.raises(AssertionError, match="cache should have answered"):
        kn.code_knowledge(keys, TITLES, LABELS, causal_dir, cache, progress=False,
                          names={**NAMES, "B01A": "w6"})  # fmt: skip


def test_cache_refuses_a_table_of_the_wrong_width(tmp_path):
    cache = kn.KnowledgeCache(tmp_path / "k.npz", "id1", ["a", "b"])
    cache.add([("diagnoses", "icd9cm:1")], np.ones((1, 2)))
    cache.save()
    with pytest.raises(ValueError, match="does not fit"):
        kn.KnowledgeCache(tmp_path / "k.npz", "id1", ["a", "b", "c"])
    assert kn.KnowledgeCache(tmp_path / "k.npz", "id2", ["a", "b", "c"]).rows == {}


@pytest.mark.slow
def test_torchrun_spreads_the_codes_over_processes(causal_dir, tmp_path):
    """Two gloo CPU processes under torchrun fill the same table as one process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun next to {sys.executable}")
    repo = Path(__file__).resolve().parents[1]
    keys = [("diagnoses", f"icd9cm:{i}") for i in range(5)] + [("procedures", "icd9pcs:1")]
    words = ["k0", "k1 w2", "w3", "k4 k5", "w6 w7", "k2"]
    codes = tmp_path / "codes.tsv"
    codes.write_text("".join(f"{k}\t{c}\t{w}\n" for (k, c), w in zip(keys, words, strict=True)))
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    (tmp_path / "names.json").write_text(json.dumps(NAMES))
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    out = tmp_path / "two.npz"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
           "distill.medication.knowledge", "--backbone", causal_dir, "--codes", str(codes),
           "--labels", str(tmp_path / "labels.json"), "--names", str(tmp_path / "names.json"),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    titles = dict(zip([c for _, c in keys], words, strict=True))
    one = kn.code_knowledge(keys, titles, LABELS, causal_dir, tmp_path / "one.npz",
                            progress=False, names=NAMES)  # fmt: skip
    phrases = kn.class_phrases(LABELS, NAMES)
    two = kn.KnowledgeCache(out, kn.scorer_identity(causal_dir, phrases), phrases)
    np.testing.assert_allclose(two.get(keys), one, atol=1e-3)
    assert not list(tmp_path.glob("*.rank*.npy"))  # the per-rank parts are merged and gone


def test_cli_names_a_bad_codes_line(tmp_path, capsys):
    (tmp_path / "labels.json").write_text('["A01A"]')
    (tmp_path / "codes.tsv").write_text("diagnoses\ticd9cm:1\nmedications\tA01A\n")
    rc = kn.main(["--backbone", "x", "--codes", str(tmp_path / "codes.tsv"),
                  "--labels", str(tmp_path / "labels.json"),
                  "--out", str(tmp_path / "k.npz")])  # fmt: skip
    assert rc == 2
    assert "codes.tsv:2: need kind" in capsys.readouterr().err


def test_a_killed_scoring_keeps_what_it_saved(causal_dir, tmp_path, monkeypatch):
    """The single-process scorer saves the cache every SAVE_EVERY codes: a crash after two
    codes (here at the third) loses only the codes since the last save."""
    keys = [("diagnoses", "icd9cm:4019"), ("diagnoses", "icd9cm:25000"),
            ("procedures", "icd9pcs:3995")]  # fmt: skip
    monkeypatch.setattr(kn, "SAVE_EVERY", 2)
    real = kn.LLMScorer.score
    calls = {"n": 0}

    def flaky(self, prompts):
        calls["n"] += 1
        if calls["n"] == 5:  # two null prompts, two codes, then the third code fails
            raise RuntimeError("killed")
        return real(self, prompts)

    monkeypatch.setattr(kn.LLMScorer, "score", flaky)
    cache = tmp_path / "k.npz"
    with pytest.raises(RuntimeError, match="killed"):
        kn.code_knowledge(keys, TITLES, LABELS, causal_dir, cache, progress=False, names=NAMES)
    phrases = kn.class_phrases(LABELS, NAMES)
    kept = kn.KnowledgeCache(cache, kn.scorer_identity(causal_dir, phrases), phrases)
    assert sorted(kept.rows) == sorted(keys[:2])
