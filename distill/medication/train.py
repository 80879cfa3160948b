"""Training the student: BCE on the answer plus feature-level KD from the teacher.

Offline KD (the default) reads the teacher's cached pooled features; online KD asks a callable for
them batch by batch (e.g. a live teacher forward). Early stopping on validation PR-AUC; the best
epoch's weights are the ones returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from contract.layout import INPUT_NAMES
from distill.layers import Projector
from distill.medication.losses import distill_loss
from distill.medication.student import LeaderStudent, StudentConfig
from distill.metrics import prauc

FeatureSource = Callable[[np.ndarray], np.ndarray]  # sample indices -> teacher features [n, d]


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.3  # weight of feature MSE
    beta: float = 0.1  # weight of profile/medication InfoNCE
    temperature: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 200
    patience: int = 20
    seed: int = 0
    standardize_teacher: bool = True  # z-score teacher features with training statistics
    projector_mlp: bool = False  # False: one linear map to the teacher's width; True: two layers
    # start the output bias at the training drugs' log-odds, so that no epoch is spent learning
    # the popularity prior and early stopping compares models that all know it
    prior_init: bool = True
    # learning-rate multiplier for the per-drug parameters (repeat head, wide path, output bias):
    # Adam moves a parameter by about lr a step, and with ~6 steps an epoch a weight starting at
    # 0 cannot reach the logit scale (1-3) it needs before early stopping fires
    fast_lr_multiplier: float = 10.0
    fast_weight_decay: float | None = None  # AdamW decay of those parameters (None: weight_decay)
    wide_l2: float = 1e-4  # L2 penalty (sum of squares) on the wide table, added to the loss
    # initial value of the repeat head's "given at the previous visit" weight (logits). > 0 starts
    # the student AT the previous_visit rule (prior + copy; the deep head's output layer then
    # starts at zero), so that an early-stopped student is the rule plus corrections
    copy_init: float = 3.0
    # initial value of the repeat head's "share of earlier visits" weight (logits): the rule
    # "prior + previous visit + a little for any earlier visit" beats plain previous_visit
    repeat_mean_init: float = 2.5
    # how the wide table starts: "zero", or "counts": each code's smoothed log-odds lift over
    # the training drugs, log(P(drug | code) / (1 - ...)) - log-odds(drug), P shrunk towards the
    # drug's frequency by `wide_init_alpha` pseudo-visits, each kind scaled by one over its mean
    # number of ids per sample (so a visit's rows add up to about one average lift). A naive-
    # Bayes start: what ~200 samples say about each code, before any gradient step
    wide_init: str = "counts"
    wide_init_alpha: float = 2.0
    # what the wide L2 penalty pulls towards: "zero", or "init" (the counted start): the rows
    # then stay near what the counts say, and a visit entered with one or two codes (which the
    # "mean" path reads at full weight) is not scored from rows that drifted while they were
    # only ever read one twentieth at a time
    wide_l2_target: str = "zero"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.fast_lr_multiplier > 0:
            raise ValueError(f"fast_lr_multiplier must be > 0, got {self.fast_lr_multiplier}")
        if self.wide_l2 < 0 or (self.fast_weight_decay is not None and self.fast_weight_decay < 0):
            raise ValueError("wide_l2 and fast_weight_decay must be >= 0")
        if self.wide_init not in ("zero", "counts"):
            raise ValueError(f"wide_init must be 'zero' or 'counts', got {self.wide_init!r}")
        if self.wide_l2_target not in ("zero", "init"):
            raise ValueError(
                f"wide_l2_target must be 'zero' or 'init', got {self.wide_l2_target!r}"
            )
        if not self.wide_init_alpha > 0:
            raise ValueError(f"wide_init_alpha must be > 0, got {self.wide_init_alpha}")

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: LeaderStudent
    projector: Projector | None
    best_epoch: int
    best_val_prauc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    val_scores: list[np.ndarray] = field(default_factory=list)  # per epoch, if kept


def _tensors(arrays: dict[str, np.ndarray], idx: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(arrays[name][idx]) for name in INPUT_NAMES]


@torch.no_grad()
def predict(
    model: LeaderStudent, arrays: dict[str, np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Sigmoid scores [N, L] in eval mode."""
    model.eval()
    n = len(arrays["y"]) if "y" in arrays else len(arrays["dx"])
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        logits, _ = model(*_tensors(arrays, idx))
        out.append(torch.sigmoid(logits).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.n_labels), np.float32)


def train_student(
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    student_cfg: StudentConfig,
    cfg: DistillConfig,
    teacher: FeatureSource | None = None,
    progress: Callable[[dict], None] | None = None,
    epochs: int | None = None,
    keep_val_scores: bool = False,
    embeddings: np.ndarray | None = None,
) -> TrainResult:
    """Train one student; `teacher` maps training-sample indices to their teacher features.
    `embeddings`: the shared embedding table's start (e.g. `code_init.code_title_table`: the
    teacher's reading of each code's title), instead of random rows.

    Early stopping on `val` PR-AUC restores the best epoch. `epochs`: train exactly that many
    epochs instead and keep the last (a refit whose epoch count was chosen elsewhere; `val` is
    then only logged and may be empty). `keep_val_scores`: keep every epoch's validation scores
    in `TrainResult.val_scores` (for pooling over inner folds).
    """
    if cfg.uses_teacher and teacher is None:
        raise ValueError("alpha > 0 needs teacher features (offline cache or online teacher)")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LeaderStudent(student_cfg)
    if embeddings is not None:
        from distill.medication.code_init import init_student_embeddings

        init_student_embeddings(model, embeddings)
    projector = (
        Projector(student_cfg.dim, student_cfg.teacher_dim, mlp=cfg.projector_mlp)
        if cfg.uses_teacher
        else None
    )
    init_student(model, train["y"], cfg, train)
    anchor = None
    if student_cfg.wide and cfg.wide_l2_target == "init":
        anchor = model.wide.weight.detach().clone()
    opt = _optimizer(model, projector, cfg)

    mean = std = None
    if cfg.uses_teacher and cfg.standardize_teacher:
        feats = teacher(np.arange(len(train["y"])))
        mean = feats.mean(0, keepdims=True)
        std = feats.std(0, keepdims=True) + 1e-6

    n = len(train["y"])
    best = (-math.inf, 0, None)
    history = []
    val_scores: list[np.ndarray] = []
    for epoch in range(cfg.max_epochs if epochs is None else epochs):
        model.train()
        if projector:
            projector.train()
        order = rng.permutation(n)
        sums: dict[str, float] = {}
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            inputs = _tensors(train, idx)
            y = torch.from_numpy(train["y"][idx])
            logits, feats = model(*inputs)
            projected = t_feats = prof = meds = None
            if cfg.uses_teacher:
                tf = teacher(idx)
                if mean is not None:
                    tf = (tf - mean) / std
                t_feats = torch.from_numpy(tf.astype(np.float32))
                projected = projector(feats)
            if cfg.beta > 0:
                prof = model.profile_embedding(inputs[INPUT_NAMES.index("profile")])
                meds = model.medication_set_embedding(_label_ids(y))
            loss, parts = distill_loss(
                logits, y, projected, t_feats, prof, meds, cfg.alpha, cfg.beta, cfg.temperature
            )
            if cfg.wide_l2 > 0 and student_cfg.wide:
                drift = model.wide.weight if anchor is None else model.wide.weight - anchor
                loss = loss + cfg.wide_l2 * drift.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        s_val = predict(model, val) if len(val["y"]) else None
        val_prauc = prauc(val["y"], s_val) if s_val is not None else 0.0
        if keep_val_scores and s_val is not None:
            val_scores.append(s_val)
        row = {"epoch": epoch, "val_prauc": val_prauc, **{k: v / n for k, v in sums.items()}}
        history.append(row)
        if progress:
            progress(row)
        if epochs is not None:
            best = (val_prauc, epoch, None)
        elif val_prauc > best[0]:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            pstate = (
                {k: v.clone() for k, v in projector.state_dict().items()} if projector else None
            )
            best = (val_prauc, epoch, (state, pstate))
        elif epoch - best[1] >= cfg.patience:
            break
    if best[2] is not None:
        state, pstate = best[2]
        model.load_state_dict(state)
        if projector:
            projector.load_state_dict(pstate)
    model.eval()
    return TrainResult(
        model, projector, best[1], best[0], history, time.perf_counter() - t0, val_scores
    )


FAST_PARAMETERS = frozenset({"repeat_last", "repeat_mean", "wide.weight", "head.3.bias"})


@torch.no_grad()
def init_student(
    model: LeaderStudent,
    y_train: np.ndarray,
    cfg: DistillConfig,
    train: dict[str, np.ndarray] | None = None,
) -> None:
    """`prior_init`: output bias = training log-odds; `copy_init` / `repeat_mean_init`: the
    repeat weights, with the deep head's output zeroed; `wide_init="counts"`: the wide table
    from `count_lift_table` over `train` (the training arrays)."""
    out = model.head[-1]
    if cfg.prior_init and len(y_train):
        freq = (np.asarray(y_train, np.float64).sum(0) + 0.5) / (len(y_train) + 1.0)
        out.bias.copy_(torch.from_numpy(np.log(freq / (1.0 - freq))).to(out.bias.dtype))
    if (cfg.copy_init or cfg.repeat_mean_init) and model.config.repeat_head:
        model.repeat_last.fill_(cfg.copy_init)
        model.repeat_mean.fill_(cfg.repeat_mean_init)
        out.weight.zero_()  # the untrained student is exactly prior + copy (+ wide start)
    if cfg.wide_init == "counts" and model.config.wide and train is not None and len(y_train):
        table = count_lift_table(train, model, cfg.wide_init_alpha)
        model.wide.weight.copy_(torch.from_numpy(table).to(model.wide.weight.dtype))


def _kind_size(model: LeaderStudent, group: int) -> int:
    c = model.config
    return (c.n_diagnoses, c.n_procedures, c.n_medications, c.n_profile)[group]


def codes_per_visit(arrays: dict[str, np.ndarray]) -> float:
    """Mean number of distinct diagnosis and procedure ids of the current visit per sample (the
    `wide_codes_scale` of a "sqrt" or "mean" wide path); label-free, 1.0 for no samples."""
    dx, px = arrays["dx"][:, -1], arrays["px"][:, -1]
    counts = [
        len(np.unique(a[a != 0])) + len(np.unique(b[b != 0])) for a, b in zip(dx, px, strict=True)
    ]
    return float(np.mean(counts)) if counts else 1.0


def count_lift_table(
    train: dict[str, np.ndarray],
    model: LeaderStudent,
    alpha: float = 2.0,
    prior_logits: np.ndarray | None = None,
) -> np.ndarray:
    """[wide rows, labels]: each id's smoothed log-odds lift over the training labels.

    Rows are the student's shared id space (`wide`: diagnoses | procedures | medications |
    profile). An id counts once per sample where the wide path reads it: the current visit's
    diagnoses and procedures, the previous visit's medications, the profile. P(label | id) =
    (count + alpha * freq) / (samples with id + alpha); the row is logit(P) - logit(freq), so an
    id seen in few samples stays near zero. Each kind is scaled by one over its mean number of
    distinct ids per sample that has any (the wide path sums its rows; for the current visit's
    codes with `wide_codes` "sqrt" or "mean", by one over the path's `wide_codes_scale`). Pad
    rows stay zero. `prior_logits` [rows, labels] (e.g. an LLM's zero-shot knowledge per code):
    P shrinks towards sigmoid(logit(freq) + prior) instead of freq, so a row seen in no sample
    is its prior.
    """
    y = np.asarray(train["y"], np.float64)
    n, n_labels = y.shape
    freq = (y.sum(0) + 0.5) / (n + 1.0)
    base = np.log(freq / (1.0 - freq))
    med = train["med"]
    prev_med = med[:, -2] if med.shape[1] > 1 else np.zeros_like(med[:, -1])
    groups = (
        (train["dx"][:, -1], model.dx_offset),
        (train["px"][:, -1], model.px_offset),
        (prev_med, model.med_offset),
        (train["profile"], model.profile_offset),
    )

    def distinct(ids: np.ndarray) -> list[np.ndarray]:
        ids = np.asarray(ids).reshape(n, -1)
        return [np.unique(row[row != 0]) for row in ids]

    current = [distinct(groups[0][0]), distinct(groups[1][0])]
    codes_per_visit = np.mean([len(a) + len(b) for a, b in zip(*current, strict=True)])
    scaled_path = getattr(model.config, "wide_codes", "sum") != "sum"
    codes_scale = float(model.config.wide_codes_scale) if scaled_path else None
    table = np.zeros(tuple(model.wide.weight.shape), np.float64)
    for g, (ids, offset) in enumerate(groups):
        rows = current[g] if g < 2 else distinct(ids)
        counts = [len(u) for u in rows if len(u)]
        if not counts:
            continue
        # the current visit's diagnoses and procedures together add up to about one lift (with
        # "sqrt" or "mean", the path's own scale stands in for the count: a typical visit of
        # that many codes reads the same)
        scale = (codes_scale or codes_per_visit) if g < 2 else float(np.mean(counts))
        seen = np.zeros(table.shape[0])
        hits = np.zeros(table.shape)
        for i, u in enumerate(rows):
            seen[u + offset] += 1.0
            hits[u + offset] += y[i]
        span = slice(offset, offset + _kind_size(model, g))
        used = np.zeros(table.shape[0], dtype=bool)
        used[span] = seen[span] > 0
        target = np.broadcast_to(freq, table.shape)
        if prior_logits is not None:
            used[span] |= np.abs(prior_logits[span]).sum(1) > 0
            target = 1.0 / (1.0 + np.exp(-(base + prior_logits)))
        used[offset] = False  # <pad>
        p = (hits[used] + alpha * target[used]) / (seen[used, None] + alpha)
        p = np.clip(p, 1e-6, 1 - 1e-6)
        table[used] = (np.log(p / (1.0 - p)) - base) / max(scale, 1.0)
    return table.astype(np.float32)


def _optimizer(model: LeaderStudent, projector, cfg: DistillConfig) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    fast = [p for n, p in named if n in FAST_PARAMETERS]
    slow = [p for n, p in named if n not in FAST_PARAMETERS]
    slow += list(projector.parameters()) if projector else []
    fast_wd = cfg.weight_decay if cfg.fast_weight_decay is None else cfg.fast_weight_decay
    groups = [{"params": slow}]
    if fast:
        groups.append(
            {"params": fast, "lr": cfg.lr * cfg.fast_lr_multiplier, "weight_decay": fast_wd}
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _label_ids(y: torch.Tensor) -> torch.Tensor:
    """Multi-hot labels -> medication vocabulary ids (label + 2), 0-padded, for set embeddings."""
    width = max(int(y.sum(1).max().item()), 1)
    ids = torch.zeros((y.shape[0], width), dtype=torch.long)
    for i, row in enumerate(y):
        nz = torch.nonzero(row, as_tuple=False).flatten() + 2
        ids[i, : len(nz)] = nz
    return ids


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """What an inner k-fold over the non-test patients chose for one student setting."""

    epochs: int  # number of epochs to train the refit for (best pooled epoch + 1)
    threshold: float  # decision threshold, best Jaccard on the pooled out-of-fold scores
    curve: list[float]  # pooled out-of-fold PR-AUC after each epoch
    oof_scores: np.ndarray  # [n, L] out-of-fold scores at the chosen epoch
    inner_folds: int
    seconds: float

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "threshold": self.threshold,
            "oof_prauc": round(self.curve[self.epochs - 1], 4),
            "curve": [round(v, 4) for v in self.curve],
            "inner_folds": self.inner_folds,
            "seconds": round(self.seconds, 1),
        }


def inner_fold_of(patient_ids, k: int) -> np.ndarray:
    """Inner fold of each sample's patient: sha256("inner:" + id) % k (never the outer split)."""
    import hashlib

    if k < 2:
        raise ValueError(f"inner k-fold needs k >= 2, got {k}")
    return np.array(
        [int(hashlib.sha256(f"inner:{p}".encode()).hexdigest(), 16) % k for p in patient_ids]
    )


def select_by_inner_cv(
    arrays: dict[str, np.ndarray],
    patient_ids,
    student_cfg: StudentConfig,
    cfg: DistillConfig,
    k: int = 4,
    teacher: FeatureSource | None = None,
    max_epochs: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    embeddings: np.ndarray | None = None,
) -> Selection:
    """Choose the epoch count (and threshold) on out-of-fold predictions of an inner k-fold.

    `arrays`: the non-test samples (training and validation patients); `patient_ids`: one per
    sample. Each inner fold trains on the other folds' patients for `max_epochs` (default
    `cfg.max_epochs`) with no early stopping and scores its own patients after every epoch; the
    epoch whose pooled out-of-fold PR-AUC is best wins. Uses 4-5x more patients to choose
    with than the validation split alone; the test patients are not involved. `progress`:
    called after every epoch with the share of the inner trainings done and a line saying
    which inner fold and epoch, with that epoch's PR-AUC on the inner fold's own patients.
    """
    from distill.medication.evaluate import choose_threshold

    t0 = time.perf_counter()
    inner = inner_fold_of(patient_ids, k)
    n_epochs = max_epochs or cfg.max_epochs
    y = arrays["y"]
    oof = np.zeros((n_epochs, *y.shape), np.float32)
    for f in range(k):
        va = np.flatnonzero(inner == f)
        tr = np.flatnonzero(inner != f)
        if len(va) == 0 or len(tr) == 0:
            continue
        source = (lambda i, t=tr: teacher(t[i])) if teacher is not None else None

        def on_epoch(row: dict, f: int = f) -> None:
            if progress is not None:
                done = (f * n_epochs + row["epoch"] + 1) / (k * n_epochs)
                progress(
                    done,
                    f"inner fold {f + 1}/{k} epoch {row['epoch'] + 1}/{n_epochs}: "
                    f"val PR-AUC {row['val_prauc']:.4f}",
                )

        res = train_student(
            _subset(arrays, tr),
            _subset(arrays, va),
            student_cfg,
            cfg,
            teacher=source,
            progress=on_epoch,
            epochs=n_epochs,
            keep_val_scores=True,
            embeddings=embeddings,
        )
        for e, scores in enumerate(res.val_scores):
            oof[e, va] = scores
    curve = [prauc(y, oof[e]) for e in range(n_epochs)]
    best = int(np.argmax(curve))
    return Selection(
        epochs=best + 1,
        threshold=choose_threshold(y, oof[best]),
        curve=curve,
        oof_scores=oof[best],
        inner_folds=k,
        seconds=time.perf_counter() - t0,
    )


def fit_selected(
    arrays: dict[str, np.ndarray],
    patient_ids,
    student_cfg: StudentConfig,
    cfg: DistillConfig,
    k: int = 4,
    teacher: FeatureSource | None = None,
    max_epochs: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    embeddings: np.ndarray | None = None,
) -> tuple[TrainResult, Selection]:
    """`select_by_inner_cv`, then a refit on all of `arrays` for the chosen epoch count."""
    sel = select_by_inner_cv(
        arrays, patient_ids, student_cfg, cfg, k, teacher, max_epochs, progress=progress,
        embeddings=embeddings,
    )  # fmt: skip
    empty = _subset(arrays, np.zeros(0, dtype=np.int64))
    res = train_student(
        arrays, empty, student_cfg, cfg, teacher=teacher, epochs=sel.epochs, embeddings=embeddings
    )
    return res, sel


def _subset(arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {name: a[idx] for name, a in arrays.items()}
