"""Training the news teacher, as NRMS is trained (Wu et al. 2019): every clicked candidate of a
training impression is put against K non-clicked candidates of the same impression, and softmax
cross-entropy picks the clicked one. Early stopping on validation AUC.

With a frozen LM (the CPU default) the catalog goes through the LM once and only the heads
train on the cached pooled states, which takes seconds; with LoRA each batch's items go through
the LM again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from distill.backbone import configure_threads, encode_texts, pad_batch
from distill.news.evaluate import validation_auc
from distill.news.samples import (
    ItemIndex,
    click_examples,
    history_rows,
    impression_scores,
    item_text,
)
from distill.news.teacher import (
    NewsTeacher,
    NewsTeacherConfig,
    encode_catalog,
    model_device,
    user_vectors,
)

__all__ = ["NewsTeacherResult", "train_news_teacher"]

Log = Callable[[str], None]

logger = logging.getLogger(__name__)


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


def _item_token_ids(model: NewsTeacher, texts: Sequence[str]) -> list[list[int]]:
    return encode_texts(model.tokenizer, texts, model.max_length)


def _pool_rows(model: NewsTeacher, token_ids: list[list[int]], rows: np.ndarray) -> Tensor:
    """Pooled states of catalog rows (1-based; row 0 gives zeros), with grad if enabled."""
    device = model_device(model)
    out = torch.zeros((len(rows), model.hidden_size), device=device)
    real = np.flatnonzero(rows > 0)
    if len(real):
        batch = pad_batch([token_ids[r - 1] for r in rows[real]], model.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = out.index_put((torch.as_tensor(real, device=device),), model.pooled(**batch))
    return out


def train_news_teacher(
    items: dict[str, Any],
    train: Sequence[Any],
    val: Sequence[Any],
    cfg: NewsTeacherConfig,
    item_ids: Sequence[str] | None = None,
    device: str | None = None,
    log: Log | None = logger.info,
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
