"""The news teacher: a pretrained language model as the item encoder of an NRMS-style ranker.

Item vector = ``Linear(standardize(pool(LM("category: title"))))`` with the pooling of
`distill.backbone` (masked mean for encoders, last real token for decoders) and a per-dimension
standardization fixed from the catalog's pooled states before training (pooled LM states share
a large common direction that would otherwise swamp every dot product). User vector = additive
attention over the history's item vectors (plus a learned start vector, so an empty history
still gives one); click score = ``user . item``.

On CPU the default (``lora=False``) freezes the LM: every item text goes through it once (with a
progress bar), the pooled states are kept, and only the projection and the user encoder are
trained on top (`distill.news.teacher_train`). ``lora=True`` is the GPU option: LoRA adapters
(peft) on the attention projections are trained together with the heads.

This file: the config, the model, and saving / loading it. The vectors the student distils from
are written by `distill.news.vectors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from contract.files import atomic_path, atomic_write_json
from distill.backbone import (
    TeacherConfig,
    is_decoder_config,
    load_backbone,
    load_backbone_tokenizer,
    pad_batch,
    pool_hidden,
    quiet_transformers,
    read_saved_info,
    resolve_backbone,
    wrap_lora,
)
from distill.layers import AdditivePool
from distill.news.samples import ItemIndex, history_rows

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "WEIGHTS_FILE",
    "NewsTeacher",
    "NewsTeacherConfig",
    "encode_catalog",
    "load_news_teacher",
    "model_device",
    "save_news_teacher",
    "user_vectors",
]

FORMAT = "pocketrec-news-teacher/1"
CONFIG_FILE = "news_teacher.json"
WEIGHTS_FILE = "news_teacher.safetensors"


# --------------------------------------------------------------------------- config


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class NewsTeacherConfig:
    """The news teacher's settings. The LM fields (backbone .. lora_targets) mean what they
    mean in `distill.backbone.TeacherConfig`, which checks them; ``lora=False`` (the CPU
    default) freezes the LM and trains only the heads on cached pooled states."""

    backbone: str = "minilm"
    pooling: str = "auto"
    lora: bool = False
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None
    dim: int | None = None  # item/user vector width; None = the LM's hidden size
    attention_dim: int = 200  # additive attention width, as in NRMS
    epochs: int = 5
    lr: float = 1e-3  # heads
    lm_lr: float = 1e-4  # LoRA adapters
    batch_size: int = 64
    negatives: int = 4
    max_history: int = 50
    max_text_tokens: int = 32
    patience: int = 2
    seed: int = 0
    encode_batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, list):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        self.lm_config()  # raises on bad LM settings
        problems = []
        if self.dim is not None and (not _int(self.dim) or self.dim < 1):
            problems.append(f"dim must be None or an integer >= 1, got {self.dim!r}")
        for name in (
            "attention_dim",
            "epochs",
            "batch_size",
            "negatives",
            "max_history",
            "patience",
            "encode_batch_size",
        ):
            v = getattr(self, name)
            if not _int(v) or v < 1:
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("lr", "lm_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                problems.append(f"{name} must be a positive number, got {v!r}")
        if problems:
            raise ValueError("invalid NewsTeacherConfig: " + "; ".join(problems))

    def lm_config(self) -> TeacherConfig:
        """The LM part as a `TeacherConfig` (validated there)."""
        return TeacherConfig(
            backbone=self.backbone,
            pooling=self.pooling,
            lora=self.lora,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            lora_targets=self.lora_targets,
            max_length=self.max_text_tokens,
            seed=self.seed,
            truncation_side="right",
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NewsTeacherConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown NewsTeacherConfig keys: {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------- model


class NewsTeacher(nn.Module):
    """LM (frozen or LoRA) + item projection + additive-attention user encoder."""

    def __init__(self, cfg: NewsTeacherConfig, backbone: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.tokenizer = tokenizer
        config = backbone.config
        if cfg.pooling == "auto":
            self.pooling = "last" if is_decoder_config(config) else "mean"
        else:
            self.pooling = cfg.pooling
        self.hidden_size = int(config.hidden_size)
        self.dim = cfg.dim or self.hidden_size
        limit = getattr(config, "max_position_embeddings", None)
        self.max_length = min(cfg.max_text_tokens, limit) if _int(limit) else cfg.max_text_tokens
        self.pad_token_id = int(tokenizer.pad_token_id)
        # per-dimension centre and scale of the catalog's pooled states, set once before
        # training (`set_standardization`): pooled LM states share a large common component
        # that would otherwise dominate every dot product
        self.register_buffer("pool_center", torch.zeros(self.hidden_size))
        self.register_buffer("pool_scale", torch.ones(self.hidden_size))
        self.item_head = nn.Linear(self.hidden_size, self.dim)
        if self.dim == self.hidden_size:
            # start from the LM's own geometry: score = (attended history) . item, as pooled
            # (scaled so that dot products of standardized states start near unit size)
            with torch.no_grad():
                self.item_head.weight.copy_(torch.eye(self.dim) * self.dim**-0.25)
                self.item_head.bias.zero_()
        self.user_start = nn.Parameter(torch.zeros(self.dim))
        self.user_pool = AdditivePool(self.dim, cfg.attention_dim)

    @classmethod
    def from_config(cls, cfg: NewsTeacherConfig) -> NewsTeacher:
        source = resolve_backbone(cfg.backbone)
        tokenizer = load_backbone_tokenizer(source, "right")
        backbone = load_backbone(source)
        if cfg.lora:
            backbone = wrap_lora(backbone, cfg)
        else:
            backbone.requires_grad_(False)
        return cls(cfg, backbone, tokenizer)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled LM states [N, hidden] of tokenized item texts."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return pool_hidden(out.last_hidden_state, attention_mask, self.pooling)

    def items(self, pooled: Tensor) -> Tensor:
        """Item vectors [N, dim] from pooled states [N, hidden]."""
        return self.item_head((pooled - self.pool_center) / self.pool_scale)

    @torch.no_grad()
    def set_standardization(self, pooled: Tensor) -> None:
        """Centre and scale pooled states with the per-dimension statistics of `pooled`
        ``[n_items, hidden]`` (with LoRA: of the LM before training; they stay fixed)."""
        self.pool_center.copy_(pooled.mean(0))
        if len(pooled) > 1:
            self.pool_scale.copy_(pooled.std(0, unbiased=False).clamp(min=1e-4))
        else:
            self.pool_scale.fill_(1.0)

    def users(self, history_vecs: Tensor, history_mask: Tensor) -> Tensor:
        """User vectors [B, dim] from history item vectors [B, H, dim] and mask [B, H]."""
        mask = history_mask.to(history_vecs.dtype)
        start = torch.zeros_like(history_vecs[:, :1]) + self.user_start
        x = torch.cat([start, history_vecs], dim=1)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.user_pool(x, keep)

    def head_state(self) -> dict[str, Tensor]:
        """Trainable tensors outside the LM (what a frozen-LM teacher learns)."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if k.startswith(("pool_", "item_head.", "user_start", "user_pool."))
        }


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_catalog(
    model: NewsTeacher, token_ids: list[list[int]], batch_size: int, desc: str = "teacher items"
) -> Tensor:
    """Pooled LM states of every catalog item ``[n_items, hidden]`` (float32, on the CPU), in
    length-sorted batches under a progress bar."""
    from tqdm.auto import tqdm

    order = np.argsort([len(t) for t in token_ids], kind="stable")
    out = torch.zeros((len(token_ids), model.hidden_size))
    device = model_device(model)
    was_training = model.training
    model.eval()
    with torch.no_grad(), tqdm(total=len(order), unit="item", desc=desc, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            pos = order[start : start + batch_size]
            batch = pad_batch([token_ids[i] for i in pos], model.pad_token_id)
            pooled = model.pooled(**{k: v.to(device) for k, v in batch.items()})
            out[torch.as_tensor(pos)] = pooled.float().cpu()
            bar.update(len(pos))
    model.train(was_training)
    return out


@torch.no_grad()
def user_vectors(
    model: NewsTeacher,
    item_table: Tensor,
    impressions: Sequence[Any],
    index: ItemIndex,
    batch_size: int = 256,
) -> Tensor:
    """User vectors ``[len(impressions), dim]`` (float32, CPU) from the catalog's item
    vectors `item_table` ``[n_items + 1, dim]`` (row 0 = padding)."""
    rows, mask = history_rows(impressions, index, model.cfg.max_history)
    device = model_device(model)
    table = item_table.to(device)
    out = torch.zeros((len(impressions), model.dim))
    for start in range(0, len(impressions), batch_size):
        r = torch.as_tensor(rows[start : start + batch_size], device=device)
        m = torch.as_tensor(mask[start : start + batch_size], device=device)
        out[start : start + len(r)] = model.users(table[r], m).float().cpu()
    return out


# --------------------------------------------------------------------------- files


def save_news_teacher(model: NewsTeacher, out_dir: str | Path) -> Path:
    """Config JSON + the heads' weights (+ the LoRA adapter); the LM itself is the named
    backbone and is not copied."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heads = {k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(heads, str(tmp))
    if model.cfg.lora:
        model.backbone.save_pretrained(str(out / "adapter"))
    info = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "pooling": model.pooling,
        "hidden_size": model.hidden_size,
        "dim": model.dim,
    }
    atomic_write_json(out / CONFIG_FILE, info)
    return out


def load_news_teacher(out_dir: str | Path) -> NewsTeacher:
    """Rebuild a teacher written by `save_news_teacher` (eval mode, CPU)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    info = read_saved_info(out, CONFIG_FILE, FORMAT, "news teacher")
    cfg = NewsTeacherConfig.from_dict(info["config"])
    source = resolve_backbone(cfg.backbone)
    tokenizer = load_backbone_tokenizer(source, "right")
    backbone = load_backbone(source)
    if cfg.lora:
        from peft import PeftModel

        with quiet_transformers():
            backbone = PeftModel.from_pretrained(backbone, str(out / "adapter"))
    backbone.requires_grad_(False)
    model = NewsTeacher(cfg, backbone, tokenizer)
    missing = model.load_state_dict(load_file(str(out / WEIGHTS_FILE)), strict=False)
    if missing.unexpected_keys or set(model.head_state()) & set(missing.missing_keys):
        raise ValueError(f"{out / WEIGHTS_FILE}: does not match the rebuilt teacher")
    return model.eval()
