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
    alpha: float = 1.0  # weight of feature MSE
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

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs and patience must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

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
) -> TrainResult:
    """Train one student; `teacher` maps training-sample indices to their teacher features."""
    if cfg.uses_teacher and teacher is None:
        raise ValueError("alpha > 0 needs teacher features (offline cache or online teacher)")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = LeaderStudent(student_cfg)
    projector = (
        Projector(student_cfg.dim, student_cfg.teacher_dim, mlp=cfg.projector_mlp)
        if cfg.uses_teacher
        else None
    )
    params = list(model.parameters()) + (list(projector.parameters()) if projector else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    mean = std = None
    if cfg.uses_teacher and cfg.standardize_teacher:
        feats = teacher(np.arange(len(train["y"])))
        mean = feats.mean(0, keepdims=True)
        std = feats.std(0, keepdims=True) + 1e-6

    n = len(train["y"])
    best = (-math.inf, 0, None)
    history = []
    for epoch in range(cfg.max_epochs):
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
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        val_prauc = prauc(val["y"], predict(model, val)) if len(val["y"]) else 0.0
        row = {"epoch": epoch, "val_prauc": val_prauc, **{k: v / n for k, v in sums.items()}}
        history.append(row)
        if progress:
            progress(row)
        if val_prauc > best[0]:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            pstate = (
                {k: v.clone() for k, v in projector.state_dict().items()} if projector else None
            )
            best = (val_prauc, epoch, (state, pstate))
        elif epoch - best[1] >= cfg.patience:
            break
    state, pstate = best[2]
    model.load_state_dict(state)
    if projector:
        projector.load_state_dict(pstate)
    model.eval()
    return TrainResult(model, projector, best[1], best[0], history, time.perf_counter() - t0)


def _label_ids(y: torch.Tensor) -> torch.Tensor:
    """Multi-hot labels -> medication vocabulary ids (label + 2), 0-padded, for set embeddings."""
    width = max(int(y.sum(1).max().item()), 1)
    ids = torch.zeros((y.shape[0], width), dtype=torch.long)
    for i, row in enumerate(y):
        nz = torch.nonzero(row, as_tuple=False).flatten() + 2
        ids[i, : len(nz)] = nz
    return ids
