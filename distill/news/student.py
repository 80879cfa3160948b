"""The NRMS-style news student: a word-piece item encoder and a history user encoder.

Two separate modules, because the app runs them as two ONNX graphs (item vectors are computed
once per catalog, user vectors once per history, and a click score is their dot product):

    ItemEncoder.forward(tokens [N, T] int64, 0 = pad)                       -> [N, dim]
    UserEncoder.forward(history_vecs [B, H, dim], history_mask [B, H] f32)   -> [B, dim]

Item encoder (after NRMS, Wu et al. 2019): piece embedding -> one multi-head self-attention
layer (residual + LayerNorm) -> additive attention pooling over the real pieces. User encoder:
a learned "start" vector is put in front of the history (so an empty history still gives a
user vector), then one self-attention layer over the item vectors and additive attention
pooling. Attention is the hand-written `distill.layers.SelfAttention` with an additive -1e4
key mask: plain MatMul/Softmax ops that export with symbolic axes, no fused fast path, and pads
never reach a real position, so extra padding (of pieces or of history slots) changes nothing.

The piece vocabulary and the catalog as piece ids are in `distill.news.pieces`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from contract.files import atomic_path
from distill.data.vocab import PAD_ID
from distill.layers import AdditivePool, SelfAttention, key_bias

__all__ = [
    "FORMAT",
    "ItemEncoder",
    "NewsStudent",
    "NewsStudentConfig",
    "UserEncoder",
    "load_news_student",
    "save_news_student",
    "score",
]

FORMAT = "pocketrec-news-student/1"


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


# --------------------------------------------------------------------------- files


def save_news_student(model: NewsStudent, path: str | Path) -> None:
    """One safetensors file: both encoders' weights, the config as JSON in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict(), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


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
