"""The NRMS-style news student: a word-piece item encoder and a history user encoder.

Two separate modules, because the app runs them as two ONNX graphs (item vectors are computed
once per catalog, user vectors once per history, and a click score is their dot product):

    ItemEncoder.forward(tokens [N, T] int64, 0 = pad)                       -> [N, dim]
    UserEncoder.forward(history_vecs [B, H, dim], history_mask [B, H] f32)   -> [B, dim]

Item encoder (after NRMS, Wu et al. 2019): piece embedding -> one multi-head self-attention
layer (residual + LayerNorm) -> additive attention pooling over the real pieces. User encoder:
a learned "start" vector is put in front of the history (so an empty history still gives a
user vector), then one self-attention layer over the item vectors and additive attention
pooling. Attention is the hand-written `distill.student.SelfAttention` with an additive -1e4
key mask: plain MatMul/Softmax ops that export with symbolic axes, no fused fast path, and pads
never reach a real position, so extra padding (of pieces or of history slots) changes nothing.

The vocabulary is the teacher tokenizer's word pieces that occur in the catalog, remapped to
compact ids (`<pad>`=0, `<unk>`=1, then by falling frequency), saved as JSON by
`save_piece_vocab`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.data.vocab import PAD_ID, Vocab, write_json_atomic
from distill.student import MASK_VALUE, SelfAttention

__all__ = [
    "AdditivePool",
    "ItemEncoder",
    "NewsStudent",
    "NewsStudentConfig",
    "UserEncoder",
    "build_piece_vocab",
    "count_parameters",
    "encode_texts",
    "load_news_student",
    "load_piece_vocab",
    "save_news_student",
    "save_piece_vocab",
]

FORMAT = "pocketrec-news-student/1"
VOCAB_FORMAT = "pocketrec-news-vocab/1"

Tokenize = Callable[[str], Sequence[str]]


# --------------------------------------------------------------------------- vocabulary


def build_piece_vocab(texts: Iterable[str], tokenize: Tokenize, min_count: int = 1) -> Vocab:
    """The pieces `tokenize` (e.g. a Hugging Face tokenizer's ``tokenize``) makes of `texts`,
    as a compact `Vocab` (``<pad>``=0, ``<unk>``=1, then by falling frequency, then A-Z)."""
    return Vocab.build((p for t in texts for p in tokenize(t)), min_count=min_count)


def encode_texts(
    texts: Sequence[str], tokenize: Tokenize, vocab: Vocab, max_tokens: int
) -> np.ndarray:
    """``[len(texts), max_tokens]`` int64 piece ids, right-padded with 0 and cut at
    `max_tokens`; a piece missing from `vocab` becomes ``<unk>``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    out = np.full((len(texts), max_tokens), PAD_ID, dtype=np.int64)
    for i, text in enumerate(texts):
        ids = vocab.encode(tokenize(text))[:max_tokens]
        out[i, : len(ids)] = ids
    return out


def save_piece_vocab(vocab: Vocab, path: str | Path, **meta: Any) -> None:
    """JSON ``{"format", "pieces": {piece: id}, **meta}`` (meta: e.g. the tokenizer's name)."""
    write_json_atomic(Path(path), {"format": VOCAB_FORMAT, **meta, "pieces": vocab.to_json()})


def load_piece_vocab(path: str | Path) -> tuple[Vocab, dict[str, Any]]:
    """(vocabulary, the other keys of the file) from `save_piece_vocab`'s JSON."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != VOCAB_FORMAT:
        raise ValueError(f"{path}: not a {VOCAB_FORMAT} file (format={data.get('format')!r})")
    meta = {k: v for k, v in data.items() if k not in ("format", "pieces")}
    return Vocab.from_json(data["pieces"], str(path)), meta


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class NewsStudentConfig:
    vocab_size: int  # <pad> and <unk> included
    dim: int = 64
    heads: int = 4
    attention_dim: int = 64  # hidden width of the additive attention pooling
    dropout: float = 0.1
    teacher_dim: int = 384  # width of the teacher's vectors (for the KD projectors)

    def __post_init__(self) -> None:
        for name, low in (
            ("vocab_size", 2),
            ("dim", 1),
            ("heads", 1),
            ("attention_dim", 1),
            ("teacher_dim", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"NewsStudentConfig.{name} must be an integer >= {low}; got {value!r}"
                )
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if isinstance(self.dropout, bool) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NewsStudentConfig:
        extra = sorted(set(data) - {f.name for f in fields(cls)})
        if extra:
            raise ValueError(f"unknown NewsStudentConfig fields: {', '.join(extra)}")
        return cls(**data)


# --------------------------------------------------------------------------- layers


def key_bias(mask: Tensor) -> Tensor:
    """Float keep-mask [B, T] (1 keep, 0 pad) -> additive attention bias [B, 1, 1, T]."""
    return ((1.0 - mask) * MASK_VALUE)[:, None, None, :]


class AdditivePool(nn.Module):
    """Additive attention pooling: weights softmax(q . tanh(W x + b)) over the kept positions."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, attention_dim)
        self.query = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, T, D], mask [B, T] float (1 keep) -> [B, D]."""
        scores = self.query(torch.tanh(self.proj(x))).squeeze(-1) + (1.0 - mask) * MASK_VALUE
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights.unsqueeze(1), x).squeeze(1)


class _AttentionLayer(nn.Module):
    """LayerNorm(x + dropout(self-attention(x)))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.norm(x + self.drop(self.attn(x, key_bias(mask))))


class ItemEncoder(nn.Module):
    """Piece ids [N, T] (0 = pad) -> item vectors [N, dim]."""

    def __init__(self, config: NewsStudentConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(c.dropout)
        self.layer = _AttentionLayer(c.dim, c.heads, c.dropout)
        self.pool = AdditivePool(c.dim, c.attention_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != PAD_ID).to(self.embed.weight.dtype)
        x = self.drop(self.embed(tokens))
        return self.pool(self.layer(x, mask), mask)


class UserEncoder(nn.Module):
    """History item vectors [B, H, dim] + float mask [B, H] -> user vectors [B, dim]."""

    def __init__(self, config: NewsStudentConfig) -> None:
        super().__init__()
        c = self.config = config
        self.start = nn.Parameter(torch.zeros(c.dim))
        nn.init.normal_(self.start, std=0.1)
        self.layer = _AttentionLayer(c.dim, c.heads, c.dropout)
        self.pool = AdditivePool(c.dim, c.attention_dim)

    def forward(self, history_vecs: Tensor, history_mask: Tensor) -> Tensor:
        mask = history_mask.to(history_vecs.dtype)
        start = torch.zeros_like(history_vecs[:, :1]) + self.start  # [B, 1, D]
        x = torch.cat([start, history_vecs], dim=1)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.pool(self.layer(x, keep), keep)


class NewsStudent(nn.Module):
    """The two encoders together; the click score is ``user . item``."""

    def __init__(self, config: NewsStudentConfig) -> None:
        super().__init__()
        self.config = config
        self.item_encoder = ItemEncoder(config)
        self.user_encoder = UserEncoder(config)

    def forward(self, candidates: Tensor, history: Tensor, history_mask: Tensor) -> Tensor:
        """Scores [B, C] of candidate pieces [B, C, T] given history pieces [B, H, T]."""
        b, c, t = candidates.shape
        h = history.shape[1]
        cand = self.item_encoder(candidates.reshape(b * c, t)).reshape(b, c, -1)
        hist = self.item_encoder(history.reshape(b * h, history.shape[2])).reshape(b, h, -1)
        user = self.user_encoder(hist, history_mask)
        return score(user, cand)


def score(user: Tensor, items: Tensor) -> Tensor:
    """Dot products of user vectors [B, D] with their candidates' vectors [B, C, D] -> [B, C]."""
    return torch.matmul(items, user.unsqueeze(-1)).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- files


def save_news_student(model: NewsStudent, path: str | Path) -> None:
    """One safetensors file: both encoders' weights, the config as JSON in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict(), sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_news_student(path: str | Path) -> NewsStudent:
    """Rebuild from the file's config alone; eval mode, on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={metadata.get('format')!r})")
    model = NewsStudent(NewsStudentConfig.from_dict(json.loads(metadata["config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
