"""Shared fixtures: tiny Llama and BERT backbones built from configs in a temporary folder, so
teacher tests never download anything.

Their word-level tokenizer knows "visit", the keywords k0..k5 and the fillers w0..w11 (what
tests/test_teacher.py writes its synthetic prompts with); any other word is the unknown token.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import pytest

TINY_WORDS = ["visit"] + [f"k{j}" for j in range(6)] + [f"w{j}" for j in range(12)]


def _word_tokenizer(specials: list[str], **special_tokens: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + TINY_WORDS)}
    unk = special_tokens["unk_token"]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok, PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens), vocab


def build_tiny_llama(folder: Path) -> Path:
    """2-layer Llama (hidden 32) whose tokenizer, like Llama's, has no pad token."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    _, tok, vocab = _word_tokenizer(
        ["<unk>", "<s>", "</s>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path, raw, vocab_size: int, max_positions: int = 128) -> Path:
    """Save a 2-layer BERT (hidden 32, no dropout, seed 0) with the word-level `raw`
    tokenizer (a `tokenizers.Tokenizer` whose ids 0-3 are [PAD] [UNK] [CLS] [SEP]), given
    BERT's "[CLS] ... [SEP]" template, to `folder`."""
    import torch
    from tokenizers import processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]",
    )  # fmt: skip
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path) -> Path:
    """2-layer BERT (hidden 32, no dropout) with a [CLS] ... [SEP] template and a pad token."""
    raw, _, vocab = _word_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], unk_token="[UNK]")
    return save_tiny_bert(folder, raw, len(vocab))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> str:
    """Folder of the tiny Llama backbone + tokenizer, as `resolve_backbone` returns it."""
    from distill.backbone import resolve_backbone

    return resolve_backbone(str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> str:
    """Folder of the tiny BERT backbone + tokenizer, as `resolve_backbone` returns it."""
    from distill.backbone import resolve_backbone

    return resolve_backbone(str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A verified medication bundle with real ICD-9 titles and ATC3 names (random weights);
    see tests/bundle_factory.py."""
    from bundle_factory import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle") / "bundle")


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test, then as it was."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
