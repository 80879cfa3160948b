"""Tests for distill.medication.train: student training with and without feature KD, early
stopping, and DistillConfig validation. Tiny synthetic arrays in the layout of contract.layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.layout import INPUT_NAMES
from distill.layers import Projector
from distill.medication.student import LeaderStudent, StudentConfig
from distill.medication.train import (
    FAST_PARAMETERS,
    DistillConfig,
    _label_ids,
    _optimizer,
    codes_per_visit,
    count_lift_table,
    fit_selected,
    init_student,
    inner_fold_of,
    predict,
    train_student,
)
from distill.metrics import prauc

N_LABELS = 4
TEACHER_DIM = 24
SCFG = StudentConfig(
    n_diagnoses=12,
    n_procedures=6,
    n_medications=N_LABELS + 2,  # <pad>, <unk>, then one id per label
    n_profile=5,
    n_labels=N_LABELS,
    dim=16,
    heads=2,
    visit_layers=1,
    teacher_dim=TEACHER_DIM,
    max_visits=3,
)


# tiny models: one intra-op thread is fastest on the shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _arrays(n: int, seed: int, random_labels: bool = False) -> dict[str, np.ndarray]:
    """Label j is on when diagnosis id 2 + j is in the current visit (or at random)."""
    rng = np.random.default_rng(seed)
    v = SCFG.max_visits
    dx = rng.integers(2, SCFG.n_diagnoses, size=(n, v, 4))
    px = rng.integers(0, SCFG.n_procedures, size=(n, v, 2))
    med = rng.integers(0, SCFG.n_medications, size=(n, v, 3))
    med[:, -1] = 0  # the current visit's drugs are the answer
    n_visits = rng.integers(1, v + 1, size=n)
    visit_mask = (np.arange(v)[None, :] >= (v - n_visits)[:, None]).astype(np.float32)
    keep = visit_mask[..., None].astype(np.int64)
    current = dx[:, -1]
    y = np.stack([(current == 2 + j).any(1) for j in range(N_LABELS)], axis=1)
    if random_labels:
        y = rng.random((n, N_LABELS)) < 0.4
    y[np.arange(n), rng.integers(N_LABELS, size=n)] |= ~y.any(1)  # at least one drug
    return {
        "dx": dx * keep,
        "px": px * keep,
        "med": med * keep,
        "visit_mask": visit_mask,
        "profile": rng.integers(0, SCFG.n_profile, size=(n, 2)),
        "y": y.astype(np.float32),
    }


@pytest.fixture(scope="module")
def data():
    return _arrays(64, seed=0), _arrays(32, seed=1)


def _cfg(**kw) -> DistillConfig:
    base = {"alpha": 0.0, "beta": 0.0, "lr": 5e-3, "batch_size": 16, "max_epochs": 4,
            "patience": 50}  # fmt: skip
    return DistillConfig(**{**base, **kw})


# --------------------------------------------------------------------------- config


def test_distill_config_validation():
    cfg = DistillConfig()
    assert cfg.uses_teacher and cfg.to_dict()["alpha"] == 0.3
    assert cfg.prior_init and cfg.copy_init == 3.0 and cfg.fast_lr_multiplier == 10.0
    assert cfg.repeat_mean_init == 2.5 and cfg.wide_init == "counts" and cfg.wide_l2 == 1e-4
    with pytest.raises(ValueError, match="wide_init"):
        DistillConfig(wide_init="random")
    with pytest.raises(ValueError, match="wide_init_alpha"):
        DistillConfig(wide_init_alpha=0.0)
    assert not DistillConfig(alpha=0.0, beta=0.5).uses_teacher
    with pytest.raises(ValueError, match="alpha and beta"):
        DistillConfig(alpha=-0.1)
    with pytest.raises(ValueError, match="alpha and beta"):
        DistillConfig(beta=-1.0)
    for bad in ({"batch_size": 0}, {"max_epochs": 0}, {"patience": 0}):
        with pytest.raises(ValueError, match="batch_size, max_epochs and patience"):
            DistillConfig(**bad)
    with pytest.raises(ValueError, match="lr"):
        DistillConfig(lr=0.0)


# --------------------------------------------------------------------------- training


def test_train_without_teacher(data):
    train, val = data
    seen = []
    res = train_student(train, val, SCFG, _cfg(max_epochs=3), teacher=None, progress=seen.append)
    assert isinstance(res.model, LeaderStudent) and not res.model.training
    assert res.projector is None
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    assert seen == res.history
    for row in res.history:
        assert set(row) == {"epoch", "val_prauc", "bce"}  # no kd / nce terms at weight 0
        assert 0.0 <= row["val_prauc"] <= 1.0 and row["bce"] > 0
    assert res.seconds > 0
    scores = predict(res.model, val)
    assert scores.shape == (32, N_LABELS) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()


def test_student_learns_the_synthetic_rule(data):
    train, val = data
    old = {"wide_init": "zero", "repeat_mean_init": 0.0, "wide_l2": 1e-5}  # the old defaults
    res = train_student(train, val, SCFG, _cfg(max_epochs=15, **old))
    assert res.best_val_prauc > res.history[0]["val_prauc"] + 0.2
    assert res.history[-1]["bce"] < res.history[0]["bce"]
    # started from the training counts, the first epoch already knows most of the rule
    counted = train_student(train, val, SCFG, _cfg(max_epochs=1, wide_init="counts"))
    assert counted.history[0]["val_prauc"] > res.history[0]["val_prauc"] + 0.1


def test_alpha_without_teacher_raises(data):
    train, val = data
    with pytest.raises(ValueError, match="teacher features"):
        train_student(train, val, SCFG, _cfg(alpha=0.5), teacher=None)


def test_offline_teacher_kd_loss_decreases(data):
    train, val = data
    feats = np.random.default_rng(7).normal(2.0, 3.0, size=(64, TEACHER_DIM)).astype(np.float16)
    calls = []

    def source(idx: np.ndarray) -> np.ndarray:
        calls.append(np.asarray(idx).copy())
        return feats[idx]

    cfg = _cfg(alpha=1.0, beta=0.1, max_epochs=8, lr=1e-2)
    res = train_student(train, val, SCFG, cfg, teacher=source)
    assert isinstance(res.projector, Projector)
    kd = [row["kd"] for row in res.history]
    assert all("nce" in row and "bce" in row for row in res.history)
    # random per-sample targets: the standardised MSE starts above 1 and falls slowly
    assert kd[-1] < kd[0] - 0.1, kd
    assert (np.diff(kd) < 0).sum() >= len(kd) - 2, kd  # falls (nearly) every epoch
    # the first call reads every training sample (for standardisation), then batches
    assert calls[0].tolist() == list(range(64))
    batches = calls[1:]
    assert all(len(b) <= cfg.batch_size for b in batches)
    assert sorted(np.concatenate(batches[:4]).tolist()) == list(range(64))  # one epoch
    assert len(batches) == 4 * len(res.history)


def test_kd_training_is_reproducible(data):
    train, val = data
    feats = np.random.default_rng(3).normal(size=(64, TEACHER_DIM)).astype(np.float32)
    cfg = _cfg(alpha=1.0, beta=0.1, max_epochs=2)
    a = train_student(train, val, SCFG, cfg, teacher=lambda i: feats[i])
    b = train_student(train, val, SCFG, cfg, teacher=lambda i: feats[i])
    assert a.history == b.history
    np.testing.assert_array_equal(predict(a.model, val), predict(b.model, val))


def test_early_stopping_restores_the_best_epoch(data):
    train, _ = data
    val = _arrays(32, seed=5, random_labels=True)  # nothing to learn: PR-AUC just wanders
    cfg = _cfg(max_epochs=60, patience=3, lr=2e-2)
    res = train_student(train, val, SCFG, cfg)
    history = [row["val_prauc"] for row in res.history]
    assert len(history) < cfg.max_epochs  # patience ran out
    assert len(history) == res.best_epoch + cfg.patience + 1
    assert res.best_val_prauc == max(history) == history[res.best_epoch]
    assert history[-1] < res.best_val_prauc  # the last epoch's weights were not kept
    assert prauc(val["y"], predict(res.model, val)) == pytest.approx(res.best_val_prauc, abs=1e-9)


def test_patience_counts_epochs_without_improvement(data):
    train, val = data
    # a learning rate so small the weights never change: validation PR-AUC never improves on
    # epoch 0, so training ends after exactly `patience` more epochs
    res = train_student(train, val, SCFG, _cfg(max_epochs=20, patience=2, lr=1e-12))
    assert len(res.history) == 3 and res.best_epoch == 0
    assert len({row["val_prauc"] for row in res.history}) == 1


# --------------------------------------------------------------------------- helpers


def test_predict_on_no_samples():
    model = LeaderStudent(SCFG)
    empty = {k: v[:0] for k, v in _arrays(4, seed=2).items()}
    out = predict(model, empty)
    assert out.shape == (0, N_LABELS)


def test_predict_batches_agree_with_one_pass(data):
    _, val = data
    torch.manual_seed(0)
    model = LeaderStudent(SCFG)
    one = predict(model, val, batch_size=256)
    np.testing.assert_allclose(predict(model, val, batch_size=5), one, atol=1e-6)
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(val[k]) for k in INPUT_NAMES))
    np.testing.assert_allclose(one, torch.sigmoid(logits).numpy(), atol=1e-6)


def test_label_ids_are_medication_ids():
    y = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert _label_ids(y).tolist() == [[3, 5], [0, 0], [2, 0]]


# --------------------------------------------------------------------------- initialisation


def test_prior_init_sets_the_bias_to_the_training_log_odds(data):
    train, _ = data
    model = LeaderStudent(SCFG)
    init_student(model, train["y"], _cfg(prior_init=True))
    freq = (train["y"].sum(0) + 0.5) / (len(train["y"]) + 1.0)
    np.testing.assert_allclose(
        model.head[-1].bias.detach().numpy(), np.log(freq / (1 - freq)), rtol=1e-5
    )


def test_a_strong_copy_init_reproduces_previous_visit(data):
    """prior + copy_init, before any step: the student ranks as the previous_visit rule does."""
    from distill.medication import baselines

    train, val = data
    torch.manual_seed(0)
    model = LeaderStudent(SCFG).eval()
    init_student(model, train["y"], _cfg(prior_init=True, copy_init=20.0, repeat_mean_init=0.0))
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(val[n]) for n in INPUT_NAMES))
    logits = logits.numpy().astype(np.float64)
    # the previous visit (slot V-2) as label multi-hot; label l is medication id l + 2
    prev = np.zeros_like(val["y"])
    has_prev = val["visit_mask"][:, -2] > 0
    for i in np.flatnonzero(has_prev):
        ids = val["med"][i, -2]
        prev[i, ids[ids >= 2] - 2] = 1.0
    freq = (train["y"].sum(0) + 0.5) / (len(train["y"]) + 1.0)  # the same order as raw freq
    rule, _ = baselines.previous_visit(prev, has_prev, freq, k=2)
    assert has_prev.any() and (~has_prev).any()
    for a, b in zip(logits, rule, strict=True):
        # the same order, ties included: compare every pair of labels
        np.testing.assert_array_equal(np.sign(a[:, None] - a[None, :]),
                                      np.sign(b[:, None] - b[None, :]))  # fmt: skip
    assert prauc(val["y"], logits) == pytest.approx(prauc(val["y"], rule))


def test_fast_parameters_get_the_multiplied_learning_rate():
    model = LeaderStudent(SCFG)
    opt = _optimizer(model, None, _cfg(lr=1e-3, fast_lr_multiplier=10.0))
    slow, fast = opt.param_groups
    assert fast["lr"] == pytest.approx(1e-2) and slow["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in fast["params"]} == set(FAST_PARAMETERS)


def test_wide_l2_shrinks_the_wide_table(data):
    train, val = data
    free = train_student(train, val, SCFG, _cfg(max_epochs=3, wide_l2=0.0), epochs=3)
    tied = train_student(train, val, SCFG, _cfg(max_epochs=3, wide_l2=1.0), epochs=3)
    assert tied.model.wide.weight.norm() < free.model.wide.weight.norm()


# --------------------------------------------------------------------------- selection


def test_fixed_epochs_train_exactly_that_many_and_keep_the_last(data):
    train, val = data
    res = train_student(train, val, SCFG, _cfg(max_epochs=50, patience=1), epochs=4,
                        keep_val_scores=True)  # fmt: skip
    assert len(res.history) == 4 and res.best_epoch == 3 and len(res.val_scores) == 4
    np.testing.assert_allclose(predict(res.model, val), res.val_scores[-1], atol=1e-6)
    empty = {k: v[:0] for k, v in val.items()}  # a refit needs no validation samples
    assert len(train_student(train, empty, SCFG, _cfg(), epochs=2).history) == 2


def test_inner_folds_are_by_patient_and_deterministic():
    pids = [f"p{i % 20}" for i in range(60)]
    a, b = inner_fold_of(pids, 4), inner_fold_of(pids, 4)
    np.testing.assert_array_equal(a, b)
    assert set(a) == {0, 1, 2, 3}
    for p in set(pids):  # all samples of a patient share a fold
        assert len({f for f, q in zip(a, pids, strict=True) if q == p}) == 1
    with pytest.raises(ValueError, match="k >= 2"):
        inner_fold_of(pids, 1)


def test_select_by_inner_cv_then_refit(data):
    train, _ = data
    pids = [f"p{i // 2}" for i in range(len(train["y"]))]  # two samples a patient
    res, sel = fit_selected(train, pids, SCFG, _cfg(), k=3, max_epochs=6)
    assert len(sel.curve) == 6 and 1 <= sel.epochs <= 6
    assert sel.curve[sel.epochs - 1] == max(sel.curve)
    assert sel.oof_scores.shape == train["y"].shape and 0.05 <= sel.threshold <= 0.95
    assert prauc(train["y"], sel.oof_scores) == pytest.approx(max(sel.curve))
    assert len(res.history) == sel.epochs and not res.model.training
    assert sel.to_dict()["epochs"] == sel.epochs


def test_count_lift_table_is_each_codes_smoothed_log_odds_lift(data):
    """Label j is on exactly when diagnosis 2 + j is in the current visit: that diagnosis's
    row lifts label j well above the other labels; rows of ids never read stay zero; the
    current visit's codes are scaled by one over their mean count per sample."""
    train, _ = data
    model = LeaderStudent(SCFG)
    table = count_lift_table(train, model, alpha=2.0)
    assert table.shape == tuple(model.wide.weight.shape) and table.dtype == np.float32
    for j in range(N_LABELS):
        row = table[model.dx_offset + 2 + j]
        assert row[j] > 0 and row[j] == row.max()
    # by hand for one code: samples holding diagnosis 2 in the current visit
    y = train["y"].astype(np.float64)
    freq = (y.sum(0) + 0.5) / (len(y) + 1.0)
    has = (train["dx"][:, -1] == 2).any(1)
    p = (y[has].sum(0) + 2.0 * freq) / (has.sum() + 2.0)
    lift = np.log(p / (1 - p)) - np.log(freq / (1 - freq))
    np.testing.assert_allclose(table[model.dx_offset + 2], lift / codes_per_visit(train), rtol=1e-5)
    for offset in (model.dx_offset, model.px_offset, model.med_offset, model.profile_offset):
        assert not table[offset].any()  # pad rows
    assert not table[model.dx_offset + 1].any()  # <unk>: never in these visits
    # a "mean" path: its own scale stands in for the count
    mean_cfg = StudentConfig(**{**SCFG.to_dict(), "wide_codes": "mean", "wide_codes_scale": 2.0})
    mean_table = count_lift_table(train, LeaderStudent(mean_cfg), alpha=2.0)
    np.testing.assert_allclose(mean_table[model.dx_offset + 2], lift / 2.0, rtol=1e-5)


def test_codes_per_visit_counts_distinct_current_codes():
    arrays = {
        "dx": np.array([[[0, 0], [3, 3]], [[4, 0], [5, 0]]]),
        "px": np.array([[[0], [2]], [[0], [0]]]),
    }
    assert codes_per_visit(arrays) == pytest.approx((2 + 1) / 2)  # {3, 2} and {5}


def test_count_init_and_earlier_visit_repeat_are_applied(data):
    train, _ = data
    model = LeaderStudent(SCFG)
    init_student(model, train["y"], _cfg(wide_init="counts", repeat_mean_init=1.5), train)
    np.testing.assert_allclose(
        model.wide.weight.detach().numpy(), count_lift_table(train, model, 2.0), rtol=1e-6
    )
    assert (model.repeat_mean.detach() == 1.5).all() and (model.repeat_last.detach() == 3.0).all()
    zero = LeaderStudent(SCFG)
    init_student(zero, train["y"], _cfg(wide_init="zero"), train)
    assert not zero.wide.weight.detach().any()


def test_count_lift_table_shrinks_towards_a_prior(data):
    """With prior logits, a row no sample holds is its prior (over the scale) and a seen row
    moves towards its prior; without one, the unseen row stays zero."""
    train, _ = data
    model = LeaderStudent(SCFG)
    scale = codes_per_visit(train)
    unseen = model.dx_offset + 1  # <unk>: in no sample
    seen = model.dx_offset + 2
    prior = np.zeros(tuple(model.wide.weight.shape))
    prior[unseen] = np.linspace(-1.0, 1.0, N_LABELS)
    prior[seen] = 5.0
    plain = count_lift_table(train, model, alpha=2.0)
    informed = count_lift_table(train, model, alpha=2.0, prior_logits=prior)
    assert not plain[unseen].any()
    np.testing.assert_allclose(informed[unseen], prior[unseen] / scale, rtol=1e-5, atol=1e-6)
    assert (informed[seen] > plain[seen]).all()
    # rows without a prior are as before
    np.testing.assert_array_equal(informed[model.dx_offset + 3], plain[model.dx_offset + 3])
