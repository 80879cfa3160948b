"""Training the news student: NRMS click loss plus vector-level KD from the news teacher.

    loss = CE(softmax over 1 clicked + K non-clicked candidates)
         + alpha * MSE(item projector(student item vectors), teacher item vectors)
         + alpha * MSE(user projector(student user vector), teacher user vector)
         [+ T^2 * KL(softmax(teacher scores / T) || softmax(student scores / T))  if temperature]

Teacher vectors come from `distill.news.vectors.cache_teacher_vectors` and are z-scored per
dimension with training statistics (item statistics over the catalog, user statistics over the
training impressions) before the MSE; the score KD uses them raw (teacher user . teacher item).
The item KD covers every catalog item a batch touches (candidates and history). Early stopping
on validation AUC; the best epoch's weights are returned. ``alpha=0`` with no temperature is
the no-KD student.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from distill.layers import Projector
from distill.news.evaluate import validation_auc
from distill.news.pieces import NewsCorpus
from distill.news.samples import click_examples, history_rows, impression_scores
from distill.news.student import NewsStudent, NewsStudentConfig, score

__all__ = [
    "NewsDistillConfig",
    "NewsTrainResult",
    "TeacherTargets",
    "item_table",
    "student_scores",
    "train_news_student",
]

Log = Callable[[str], None]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewsDistillConfig:
    alpha: float = 1.0  # weight of each of the two vector MSE terms
    temperature: float | None = None  # set: add score KD (KL of candidate softmaxes) at this T
    negatives: int = 4
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    max_history: int = 50
    max_title_tokens: int = 24
    patience: int = 3
    seed: int = 0
    weight_decay: float = 0.0
    standardize_teacher: bool = True

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.alpha, bool) or not self.alpha >= 0:
            problems.append(f"alpha must be >= 0, got {self.alpha!r}")
        if self.temperature is not None and (
            isinstance(self.temperature, bool) or not self.temperature > 0
        ):
            problems.append(f"temperature must be None or > 0, got {self.temperature!r}")
        for name in (
            "negatives",
            "epochs",
            "batch_size",
            "max_history",
            "max_title_tokens",
            "patience",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            problems.append(
                f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if problems:
            raise ValueError("invalid NewsDistillConfig: " + "; ".join(problems))

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0 or self.temperature is not None

    def no_kd(self) -> NewsDistillConfig:
        """The same run without the teacher (alpha 0, no score KD)."""
        return NewsDistillConfig(**{**asdict(self), "alpha": 0.0, "temperature": None})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TeacherTargets:
    """Teacher vectors for KD: `items` ``[n_items, d]`` in the corpus' catalog order and
    `users` ``[len(train), d]`` aligned with the training impressions."""

    items: np.ndarray
    users: np.ndarray


@dataclass
class NewsTrainResult:
    model: NewsStudent
    projectors: dict[str, Projector] | None
    best_epoch: int
    best_val_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def item_table(model: NewsStudent, corpus: NewsCorpus, batch_size: int = 512) -> Tensor:
    """Student item vectors of the whole catalog ``[n + 1, dim]``, row 0 (padding) zeroed."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(corpus.tokens), batch_size):
        parts.append(
            model.item_encoder(torch.from_numpy(corpus.tokens[start : start + batch_size]))
        )
    model.train(was_training)
    table = torch.cat(parts)
    table[0] = 0.0
    return table


@torch.no_grad()
def student_scores(
    model: NewsStudent,
    corpus: NewsCorpus,
    impressions: Sequence[Any],
    max_history: int,
    table: Tensor | None = None,
    batch_size: int = 256,
) -> list[np.ndarray]:
    """Per impression, the student's candidate scores (eval mode)."""
    was_training = model.training
    model.eval()
    table = item_table(model, corpus) if table is None else table
    rows, mask = history_rows(impressions, corpus.index, max_history)
    users = []
    for start in range(0, len(impressions), batch_size):
        r = torch.from_numpy(rows[start : start + batch_size])
        m = torch.from_numpy(mask[start : start + batch_size])
        users.append(model.user_encoder(table[r], m))
    model.train(was_training)
    users_np = torch.cat(users).numpy() if users else np.zeros((0, table.shape[1]), np.float32)
    return impression_scores(table.numpy(), users_np, impressions, corpus.index)


def _zscore(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-6


def train_news_student(
    corpus: NewsCorpus,
    train: Sequence[Any],
    val: Sequence[Any],
    student_cfg: NewsStudentConfig,
    cfg: NewsDistillConfig,
    teacher: TeacherTargets | None = None,
    log: Log | None = logger.info,
    name: str = "student",
    threads: int | None = 1,
    on_epoch: Any = None,
) -> NewsTrainResult:
    """Train one student on `train` impressions; early stopping on AUC over `val`.

    `threads`: torch CPU threads while training (restored afterwards; None leaves them as
    they are). One by default: a dim-64 model's ops are too small to gain from splitting, and
    on a busy 2-core machine two threads measured several times slower than one.
    `on_epoch(epochs_done, planned_epochs, val_auc)`: called after each epoch (progress bars).
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(corpus, train, val, student_cfg, cfg, teacher, log, name, on_epoch)
    finally:
        torch.set_num_threads(before)


def _train(
    corpus: NewsCorpus,
    train: Sequence[Any],
    val: Sequence[Any],
    student_cfg: NewsStudentConfig,
    cfg: NewsDistillConfig,
    teacher: TeacherTargets | None,
    log: Log | None,
    name: str,
    on_epoch: Any = None,
) -> NewsTrainResult:
    if cfg.uses_teacher:
        if teacher is None:
            raise ValueError("alpha > 0 or a temperature needs teacher vectors")
        if teacher.items.shape[0] != len(corpus.index) or teacher.users.shape[0] != len(train):
            raise ValueError(
                f"teacher vectors {teacher.items.shape} / {teacher.users.shape} do not match "
                f"{len(corpus.index)} catalog items / {len(train)} training impressions"
            )
        if teacher.items.shape[1] != student_cfg.teacher_dim:
            raise ValueError(
                f"teacher vectors have width {teacher.items.shape[1]}, the student config "
                f"says teacher_dim={student_cfg.teacher_dim}"
            )
    log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = NewsStudent(student_cfg)
    projectors = None
    params = list(model.parameters())
    if cfg.alpha > 0:
        projectors = {
            "item": Projector(student_cfg.dim, student_cfg.teacher_dim),
            "user": Projector(student_cfg.dim, student_cfg.teacher_dim),
        }
        params += [p for proj in projectors.values() for p in proj.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    t_items = t_users = t_items_raw = t_users_raw = None
    if teacher is not None and cfg.uses_teacher:
        t_items_raw = torch.from_numpy(np.asarray(teacher.items, dtype=np.float32))
        t_users_raw = torch.from_numpy(np.asarray(teacher.users, dtype=np.float32))
        ti, tu = t_items_raw.numpy(), t_users_raw.numpy()
        if cfg.standardize_teacher:
            (mi, si), (mu, su) = _zscore(ti), _zscore(tu)
            ti, tu = (ti - mi) / si, (tu - mu) / su
        t_items, t_users = torch.from_numpy(ti), torch.from_numpy(tu)

    tokens = torch.from_numpy(corpus.tokens)
    hist, hist_mask = history_rows(train, corpus.index, cfg.max_history)
    best: tuple[float, int, Any] = (-math.inf, -1, None)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        for proj in (projectors or {}).values():
            proj.train()
        owner, cands = click_examples(train, corpus.index, cfg.negatives, rng)
        if not len(owner):
            raise ValueError("no clicked candidates in the training impressions")
        order = rng.permutation(len(owner))
        sums: dict[str, float] = {}
        for start in range(0, len(order), cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            own = owner[sel]
            h_rows, c_rows = hist[own], cands[sel]
            uniq, inv = np.unique(
                np.concatenate([h_rows.ravel(), c_rows.ravel()]), return_inverse=True
            )
            vecs = model.item_encoder(tokens[torch.from_numpy(uniq)])  # [U, dim]
            inv_t = torch.from_numpy(inv.reshape(-1))
            hv = vecs[inv_t[: h_rows.size]].reshape(*h_rows.shape, -1)
            cv = vecs[inv_t[h_rows.size :]].reshape(*c_rows.shape, -1)
            user = model.user_encoder(hv, torch.from_numpy(hist_mask[own]))
            logits = score(user, cv)
            parts = {"click": F.cross_entropy(logits, torch.zeros(len(sel), dtype=torch.long))}
            if cfg.alpha > 0:
                real = uniq > 0
                target = t_items[torch.from_numpy(uniq[real] - 1)]
                parts["kd_item"] = F.mse_loss(
                    projectors["item"](vecs[torch.from_numpy(real)]), target
                )
                parts["kd_user"] = F.mse_loss(
                    projectors["user"](user), t_users[torch.from_numpy(own)]
                )
            if cfg.temperature is not None:
                tc = t_items_raw[torch.from_numpy(np.maximum(c_rows - 1, 0))]  # [B, C, dt]
                t_logits = score(t_users_raw[torch.from_numpy(own)], tc)
                tau = cfg.temperature
                parts["kd_score"] = (
                    F.kl_div(
                        F.log_softmax(logits / tau, dim=-1),
                        F.log_softmax(t_logits / tau, dim=-1),
                        log_target=True,
                        reduction="batchmean",
                    )
                    * tau**2
                )
            loss = parts["click"] + cfg.alpha * (
                parts.get("kd_item", 0.0) + parts.get("kd_user", 0.0)
            )
            if "kd_score" in parts:
                loss = loss + parts["kd_score"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(sel)
        auc = (
            validation_auc(student_scores(model, corpus, val, cfg.max_history), val) if val else 0.0
        )
        row = {"epoch": epoch, "val_auc": auc, **{k: v / len(order) for k, v in sums.items()}}
        history.append(row)
        log(
            f"{name} epoch {epoch + 1}/{cfg.epochs}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        )
        if on_epoch is not None:  # progress: (epochs done, planned epochs, validation AUC)
            on_epoch(epoch + 1, cfg.epochs, auc)
        if auc > best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            pstate = (
                {
                    n: {k: v.clone() for k, v in p.state_dict().items()}
                    for n, p in projectors.items()
                }
                if projectors
                else None
            )
            best = (auc, epoch, (state, pstate))
        elif epoch - best[1] >= cfg.patience:
            break
    state, pstate = best[2]
    model.load_state_dict(state)
    model.eval()
    if projectors:
        for n, p in projectors.items():
            p.load_state_dict(pstate[n])
            p.eval()
    return NewsTrainResult(model, projectors, best[1], best[0], history, time.perf_counter() - t0)
