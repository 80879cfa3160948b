"""The news teacher: a pretrained language model as the item encoder of an NRMS-style ranker.

Item vector = ``Linear(standardize(pool(LM("category: title"))))`` with the pooling of
`distill.teacher` (masked mean for encoders, last real token for decoders) and a per-dimension
standardization fixed from the catalog's pooled states before training (pooled LM states share
a large common direction that would otherwise swamp every dot product). User vector = additive
attention over the history's item vectors (plus a learned start vector, so an empty history
still gives one); click score = ``user . item``. Trained as NRMS is (Wu et al. 2019): every
clicked candidate of a training impression is put against K non-clicked candidates of the same
impression, and softmax cross-entropy picks the clicked one. Early stopping on validation AUC.

On CPU the default (``lora=False``) freezes the LM: every item text goes through it once (with a
progress bar), the pooled states are kept, and only the projection and the user encoder are
trained on top, which takes seconds. ``lora=True`` is the GPU option: LoRA adapters (peft) on
the attention projections are trained together with the heads, and each batch's items go
through the LM again.

After training, `cache_teacher_vectors` writes what the student distils from: the item vectors
``[n_items, dim]`` and one user vector per impression, as float16 safetensors with a sidecar
JSON (ids, backbone, dims) each.

Shared with the student side: `item_text`, `ItemIndex`, `history_rows`, `click_examples` and
`impression_scores`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from distill.news_student import AdditivePool
from distill.teacher import (
    LORA_TARGETS,
    TeacherConfig,
    configure_threads,
    encode_texts,
    is_decoder_config,
    load_backbone,
    load_backbone_tokenizer,
    pad_batch,
    pool_hidden,
    quiet_transformers,
    read_saved_info,
    resolve_backbone,
)

__all__ = [
    "ItemIndex",
    "NewsTeacher",
    "NewsTeacherConfig",
    "NewsTeacherResult",
    "cache_teacher_vectors",
    "click_examples",
    "history_rows",
    "impression_scores",
    "item_text",
    "load_news_teacher",
    "load_teacher_vectors",
    "save_news_teacher",
    "train_news_teacher",
    "user_vectors",
]

FORMAT = "pocketrec-news-teacher/1"
VECTORS_FORMAT = "pocketrec-news-vectors/1"
CONFIG_FILE = "news_teacher.json"
WEIGHTS_FILE = "news_teacher.safetensors"

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"[pocketrec] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data helpers


def item_text(item: Any) -> str:
    """What the language model reads for an item: ``"category: title"``."""
    category = (getattr(item, "category", "") or "").strip()
    title = (getattr(item, "title", "") or "").strip()
    return f"{category}: {title}" if category else title


class ItemIndex:
    """Catalog rows: the i-th item id is row i + 1; row 0 stands for padding (and for ids
    outside the catalog)."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.ids = [str(i) for i in item_ids]
        self.row = {item: k + 1 for k, item in enumerate(self.ids)}
        if len(self.row) != len(self.ids):
            raise ValueError("item ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> list[int]:
        return [self.row.get(i, 0) for i in ids]


def history_rows(
    impressions: Sequence[Any], index: ItemIndex, max_history: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [N, H] int64, mask [N, H] float32)``: the last `max_history` catalog items of
    each history, oldest first, right-padded with row 0; ``H >= 1``."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    lists = []
    for imp in impressions:
        rows = [r for r in index.rows(imp.history) if r]
        lists.append(rows[-max_history:])
    width = max([1] + [len(r) for r in lists])
    out = np.zeros((len(lists), width), dtype=np.int64)
    mask = np.zeros((len(lists), width), dtype=np.float32)
    for i, rows in enumerate(lists):
        out[i, : len(rows)] = rows
        mask[i, : len(rows)] = 1.0
    return out, mask


def click_examples(
    impressions: Sequence[Any], index: ItemIndex, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """NRMS training examples: ``(owner [M], candidates [M, 1 + negatives])``.

    One example per clicked candidate (in the catalog) of each impression: column 0 is the
    clicked item's row, the others are non-clicked candidates of the same impression, drawn
    without replacement when there are enough and with replacement otherwise; an impression
    with no non-clicked candidate borrows random catalog items. ``owner`` is the position of
    the example's impression in `impressions`.
    """
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    owners, cands = [], []
    n = len(index)
    for i, imp in enumerate(impressions):
        rows = index.rows(imp.candidates)
        pos = [r for r, y in zip(rows, imp.labels, strict=True) if y and r]
        neg = [r for r, y in zip(rows, imp.labels, strict=True) if not y and r]
        for p in pos:
            if neg:
                pick = rng.choice(neg, size=negatives, replace=len(neg) < negatives)
            else:
                pick = rng.integers(1, n + 1, size=negatives)
            owners.append(i)
            cands.append([p, *pick.tolist()])
    if not cands:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1 + negatives), dtype=np.int64)
    return np.asarray(owners, dtype=np.int64), np.asarray(cands, dtype=np.int64)


def impression_scores(
    item_table: np.ndarray, users: np.ndarray, impressions: Sequence[Any], index: ItemIndex
) -> list[np.ndarray]:
    """Per impression, the candidates' scores ``item . user`` (float64, candidate order).

    `item_table` ``[n_items + 1, d]`` is indexed by `ItemIndex` rows (row 0: items outside
    the catalog); `users` ``[len(impressions), d]``.
    """
    out = []
    for imp, user in zip(impressions, users, strict=True):
        out.append(item_table[index.rows(imp.candidates)].astype(np.float64) @ user)
    return out


def validation_auc(scores: Sequence[np.ndarray], impressions: Sequence[Any]) -> float:
    from distill.metrics import news_metrics

    return news_metrics(
        (np.asarray(imp.labels), s) for imp, s in zip(impressions, scores, strict=True)
    )["auc"]


# --------------------------------------------------------------------------- config


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class NewsTeacherConfig:
    """The news teacher's settings. The LM fields (backbone .. lora_targets) mean what they
    mean in `distill.teacher.TeacherConfig`, which checks them; ``lora=False`` (the CPU
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
            backbone = _wrap_lora(backbone, cfg)
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


def _wrap_lora(backbone: nn.Module, cfg: NewsTeacherConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets or LORA_TARGETS.get(backbone.config.model_type)
    lora_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets) if targets else None,
        bias="none",
    )
    return get_peft_model(backbone, lora_cfg)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _item_token_ids(model: NewsTeacher, texts: Sequence[str]) -> list[list[int]]:
    return encode_texts(model.tokenizer, texts, model.max_length)


def _pool_rows(model: NewsTeacher, token_ids: list[list[int]], rows: np.ndarray) -> Tensor:
    """Pooled states of catalog rows (1-based; row 0 gives zeros), with grad if enabled."""
    device = _device(model)
    out = torch.zeros((len(rows), model.hidden_size), device=device)
    real = np.flatnonzero(rows > 0)
    if len(real):
        batch = pad_batch([token_ids[r - 1] for r in rows[real]], model.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = out.index_put((torch.as_tensor(real, device=device),), model.pooled(**batch))
    return out


def encode_catalog(
    model: NewsTeacher, token_ids: list[list[int]], batch_size: int, desc: str = "teacher items"
) -> Tensor:
    """Pooled LM states of every catalog item ``[n_items, hidden]`` (float32, on the CPU), in
    length-sorted batches under a progress bar."""
    from tqdm.auto import tqdm

    order = np.argsort([len(t) for t in token_ids], kind="stable")
    out = torch.zeros((len(token_ids), model.hidden_size))
    device = _device(model)
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
    device = _device(model)
    table = item_table.to(device)
    out = torch.zeros((len(impressions), model.dim))
    for start in range(0, len(impressions), batch_size):
        r = torch.as_tensor(rows[start : start + batch_size], device=device)
        m = torch.as_tensor(mask[start : start + batch_size], device=device)
        out[start : start + len(r)] = model.users(table[r], m).float().cpu()
    return out


# --------------------------------------------------------------------------- training


@dataclass
class NewsTeacherResult:
    model: NewsTeacher
    index: ItemIndex
    item_vectors: np.ndarray  # [n_items, dim] float32, ItemIndex order (no padding row)
    best_epoch: int
    best_val_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def item_table(self) -> np.ndarray:
        """Item vectors with the padding row 0 in front: ``[n_items + 1, dim]``."""
        pad = np.zeros((1, self.item_vectors.shape[1]), dtype=self.item_vectors.dtype)
        return np.concatenate([pad, self.item_vectors])

    def user_vectors(self, impressions: Sequence[Any]) -> np.ndarray:
        table = torch.from_numpy(self.item_table)
        return user_vectors(self.model, table, impressions, self.index).numpy()

    def scores(self, impressions: Sequence[Any]) -> list[np.ndarray]:
        users = self.user_vectors(impressions)
        return impression_scores(self.item_table, users, impressions, self.index)


def train_news_teacher(
    items: dict[str, Any],
    train: Sequence[Any],
    val: Sequence[Any],
    cfg: NewsTeacherConfig,
    item_ids: Sequence[str] | None = None,
    device: str | None = None,
    log: Log | None = _stderr,
    threads: int | None = None,
) -> NewsTeacherResult:
    """Train the teacher on `train` impressions, keep the epoch with the best AUC on `val`.

    `items`: item id -> `NewsItem` (anything with ``category`` and ``title``); `item_ids`:
    the catalog rows to use (default: every item, sorted by id). Runs on CUDA when
    available unless `device` says otherwise. `threads`: torch's CPU threads (default: every
    core this process may use, unless OMP_NUM_THREADS says otherwise).
    """
    if threads is None:
        configure_threads()
    else:
        torch.set_num_threads(threads)
    log = log or (lambda _msg: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    index = ItemIndex(sorted(items) if item_ids is None else item_ids)
    if not len(index):
        raise ValueError("the catalog is empty")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = NewsTeacher.from_config(cfg).to(dev)
    token_ids = _item_token_ids(model, [item_text(items[i]) for i in index.ids])
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    base: Tensor | None = encode_catalog(model, token_ids, cfg.encode_batch_size).to(dev)
    model.set_standardization(base)
    seconds["encode_items"] = time.perf_counter() - t
    log(f"teacher: {len(index)} item texts through the LM in {seconds['encode_items']:.1f}s")
    if cfg.lora:
        base = None  # the LM changes as it trains: items are encoded again batch by batch
    else:
        base = torch.cat([torch.zeros_like(base[:1]), base])  # padding row 0

    def catalog_table() -> Tensor:
        """Item vectors of the whole catalog, padding row 0 included (no grad)."""
        with torch.no_grad():
            if base is not None:
                table = model.items(base)
            else:
                table = model.items(encode_catalog(model, token_ids, cfg.encode_batch_size).to(dev))
                table = torch.cat([torch.zeros_like(table[:1]), table])
            table[0] = 0.0
        return table

    hist, hist_mask = history_rows(train, index, cfg.max_history)
    lm_params = [p for p in model.backbone.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if lm_params:
        groups.append({"params": lm_params, "lr": cfg.lm_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    best = (-math.inf, -1, None)
    history = []
    t = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        owner, cands = click_examples(train, index, cfg.negatives, rng)
        if not len(owner):
            raise ValueError("no clicked candidates in the training impressions")
        order = rng.permutation(len(owner))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            h = torch.as_tensor(hist[owner[sel]], device=dev)
            m = torch.as_tensor(hist_mask[owner[sel]], device=dev)
            c = torch.as_tensor(cands[sel], device=dev)
            if base is not None:
                hv, cv = model.items(base[h]), model.items(base[c])
            else:
                rows = np.concatenate([hist[owner[sel]].ravel(), cands[sel].ravel()])
                uniq, inv = np.unique(rows, return_inverse=True)
                vecs = model.items(_pool_rows(model, token_ids, uniq))
                inv = torch.as_tensor(inv, device=dev)
                hv = vecs[inv[: h.numel()]].reshape(*h.shape, -1)
                cv = vecs[inv[h.numel() :]].reshape(*c.shape, -1)
            hv = hv * m.unsqueeze(-1)
            user = model.users(hv, m)
            logits = torch.matmul(cv, user.unsqueeze(-1)).squeeze(-1)
            loss = F.cross_entropy(logits, torch.zeros(len(sel), dtype=torch.long, device=dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
        model.eval()
        table = catalog_table()
        auc = _auc_on(model, table, val, index) if val else 0.0
        row = {"epoch": epoch, "loss": total / len(order), "val_auc": auc}
        history.append(row)
        log(f"teacher epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, val AUC {auc:.4f}")
        if auc > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable}
            best = (auc, epoch, state)
        elif epoch - best[1] >= cfg.patience:
            break
    seconds["train"] = time.perf_counter() - t
    model.load_state_dict(best[2], strict=False)
    model.eval()
    item_vectors = catalog_table()[1:].float().cpu().numpy()
    return NewsTeacherResult(model, index, item_vectors, best[1], best[0], history, seconds)


def _auc_on(model: NewsTeacher, table: Tensor, imps: Sequence[Any], index: ItemIndex) -> float:
    users = user_vectors(model, table, imps, index).numpy()
    scores = impression_scores(table.float().cpu().numpy(), users, imps, index)
    return validation_auc(scores, imps)


# --------------------------------------------------------------------------- files


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _write_vectors(path: Path, vectors: np.ndarray, ids: Sequence[str], info: dict) -> Path:
    from safetensors.numpy import save_file

    from distill.data.vocab import write_json_atomic

    ids = [str(i) for i in ids]
    if len(ids) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    v = np.clip(v, -65504.0, 65504.0).astype(np.float16)
    digest = _digest(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"vectors": v}, str(tmp), metadata={"ids_sha256": digest, "n": str(len(ids))})
    os.replace(tmp, path)
    sidecar = {
        "format": VECTORS_FORMAT,
        **info,
        "n": len(ids),
        "dim": int(v.shape[1]) if v.ndim == 2 else 0,
        "dtype": "float16",
        "ids_sha256": digest,
        "ids": ids,
    }
    write_json_atomic(path.with_name(path.name + ".json"), sidecar)
    return path


def cache_teacher_vectors(
    result: NewsTeacherResult, impressions: Sequence[Any], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``items.safetensors`` (``vectors`` fp16 ``[n_items, dim]``, catalog order) and
    ``users.safetensors`` (``vectors`` fp16 ``[len(impressions), dim]``), each with a sidecar
    ``<file>.json`` listing the ids (item ids / impression ids), backbone and dims."""
    out = Path(out_dir)
    model = result.model
    info = {
        "backbone": model.cfg.backbone,
        "pooling": model.pooling,
        "hidden_size": model.hidden_size,
        "lora": model.cfg.lora,
        "max_history": model.cfg.max_history,
    }
    items = _write_vectors(
        out / "items.safetensors", result.item_vectors, result.index.ids, {"kind": "items", **info}
    )
    users = _write_vectors(
        out / "users.safetensors",
        result.user_vectors(impressions),
        [imp.impression_id for imp in impressions],
        {"kind": "users", **info},
    )
    return items, users


def load_teacher_vectors(
    path: str | Path, ids: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], dict]:
    """``(vectors float32, ids, sidecar)`` from `cache_teacher_vectors`'s files; with `ids`,
    the rows for exactly those ids, in that order (a missing id raises)."""
    from safetensors import safe_open

    path = Path(path)
    sidecar_path = path.with_name(path.name + ".json")
    if not sidecar_path.is_file():
        raise FileNotFoundError(f"{sidecar_path}: sidecar missing")
    info = json.loads(sidecar_path.read_text(encoding="utf-8"))
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        vectors = f.get_tensor("vectors").astype(np.float32)
    stored = info.get("ids") or []
    if meta.get("ids_sha256") != info.get("ids_sha256") or _digest(stored) != info.get(
        "ids_sha256"
    ):
        raise ValueError(f"{sidecar_path} does not belong to {path} (id digests differ)")
    if len(stored) != len(vectors):
        raise ValueError(f"{path}: {len(vectors)} rows but {len(stored)} ids")
    if ids is None:
        return vectors, stored, info
    row = {k: i for i, k in enumerate(stored)}
    missing = [i for i in ids if i not in row][:3]
    if missing:
        raise KeyError(f"{path}: no vectors for ids {missing}")
    return vectors[[row[i] for i in ids]], [str(i) for i in ids], info


def save_news_teacher(model: NewsTeacher, out_dir: str | Path) -> Path:
    """Config JSON + the heads' weights (+ the LoRA adapter); the LM itself is the named
    backbone and is not copied."""
    from safetensors.torch import save_file

    from distill.data.vocab import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heads = {k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}
    save_file(heads, str(out / WEIGHTS_FILE))
    if model.cfg.lora:
        model.backbone.save_pretrained(str(out / "adapter"))
    info = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "pooling": model.pooling,
        "hidden_size": model.hidden_size,
        "dim": model.dim,
    }
    write_json_atomic(out / CONFIG_FILE, info)
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
