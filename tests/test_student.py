"""Tests for distill.medication.student: shapes, persistence, padding invariance, learning, ONNX
export."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from contract.layout import INPUT_NAMES
from distill.layers import Projector, count_parameters
from distill.medication.student import (
    LeaderStudent,
    StudentConfig,
    load_student,
    save_student,
)

# tiny models: one intra-op thread is fastest on the shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = StudentConfig(
    n_diagnoses=30,
    n_procedures=12,
    n_medications=20,
    n_profile=9,
    n_labels=18,
    dim=32,
    heads=4,
    visit_layers=2,
    teacher_dim=48,
)


def random_inputs(cfg: StudentConfig, b: int, v: int, seed: int = 0, cd=5, cp=3, cm=6, p=4):
    """A batch with random codes (some 0 = pad), ragged visit counts, right-aligned."""
    g = torch.Generator().manual_seed(seed)
    dx = torch.randint(0, cfg.n_diagnoses, (b, v, cd), generator=g)
    px = torch.randint(0, cfg.n_procedures, (b, v, cp), generator=g)
    med = torch.randint(0, cfg.n_medications, (b, v, cm), generator=g)
    profile = torch.randint(0, cfg.n_profile, (b, p), generator=g)
    n_visits = torch.randint(1, v + 1, (b,), generator=g)
    slots = torch.arange(v).expand(b, v)
    visit_mask = (slots >= (v - n_visits)[:, None]).float()
    keep = visit_mask[..., None].long()
    dx, px, med = dx * keep, px * keep, med * keep
    med[:, -1] = 0  # the current visit's drugs are the answer
    dx[:, :, 0] = dx[:, :, 0].clamp(min=2) * keep[..., 0]  # every visit has a diagnosis
    return dx, px, med, visit_mask, profile


def test_config_validation_and_dict_round_trip():
    assert StudentConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(**{**SMALL.to_dict(), "dim": 30})
    with pytest.raises(ValueError, match="n_labels"):
        StudentConfig(**{**SMALL.to_dict(), "n_labels": 0})
    with pytest.raises(ValueError, match="dropout"):
        StudentConfig(**{**SMALL.to_dict(), "dropout": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        StudentConfig.from_dict({**SMALL.to_dict(), "width": 3})


def test_forward_shapes_and_side_embeddings():
    torch.manual_seed(0)
    model = LeaderStudent(SMALL).eval()
    args = random_inputs(SMALL, b=5, v=7)
    logits, features = model(*args)
    assert logits.shape == (5, SMALL.n_labels) and features.shape == (5, SMALL.dim)
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    assert model.profile_embedding(args[4]).shape == (5, SMALL.dim)
    assert model.medication_set_embedding(args[2][:, 0]).shape == (5, SMALL.dim)
    assert Projector(SMALL.dim, SMALL.teacher_dim)(features).shape == (5, SMALL.teacher_dim)
    mlp = Projector(SMALL.dim, SMALL.teacher_dim, mlp=True)
    assert mlp(features).shape == (5, SMALL.teacher_dim)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    # more visit slots than max_visits still run (distance embeddings are clamped)
    logits, _ = model(*random_inputs(SMALL, b=2, v=SMALL.max_visits + 3))
    assert logits.shape == (2, SMALL.n_labels)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = LeaderStudent(SMALL).eval()
    path = tmp_path / "out" / "student.safetensors"
    save_student(model, SMALL, path)
    loaded, cfg = load_student(path)
    assert cfg == SMALL and not loaded.training
    args = random_inputs(SMALL, b=4, v=6, seed=3)
    with torch.no_grad():
        for a, b in zip(model(*args), loaded(*args), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["student.safetensors"]


def test_load_rejects_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a"):
        load_student(path)


def test_padding_invariance():
    torch.manual_seed(2)
    model = LeaderStudent(SMALL).eval()
    dx, px, med, mask, profile = random_inputs(SMALL, b=4, v=5, seed=4)
    b = dx.shape[0]

    def pad(x: torch.Tensor, left_visits: int, right_codes: int) -> torch.Tensor:
        x = F.pad(x, (0, right_codes)) if right_codes else x
        return F.pad(x, (0, 0, left_visits, 0))  # new visit slots on the left (oldest side)

    padded = (
        pad(dx, 3, 2),
        pad(px, 3, 4),
        pad(med, 3, 1),
        torch.cat([torch.zeros(b, 3), mask], dim=1),
        F.pad(profile, (0, 3)),
    )
    assert padded[0].shape == (b, 8, 7)
    with torch.no_grad():
        base, padded_out = model(dx, px, med, mask, profile), model(*padded)
    for a, c in zip(base, padded_out, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-5)


def test_the_current_visit_matters():
    torch.manual_seed(3)
    model = LeaderStudent(SMALL).eval()
    dx, px, med, mask, profile = random_inputs(SMALL, b=3, v=4, seed=5)
    changed = dx.clone()
    changed[:, -1] = 0
    changed[:, -1, :2] = torch.tensor([7, 11])
    with torch.no_grad():
        a, _ = model(dx, px, med, mask, profile)
        b, _ = model(changed, px, med, mask, profile)
    assert (a - b).abs().amax(dim=1).min() > 1e-4


def test_learns_a_function_of_the_diagnoses():
    """Label j is on when diagnosis 2 + j is in the current visit: the loss must fall a lot."""
    torch.manual_seed(4)
    cfg = StudentConfig(
        n_diagnoses=10,
        n_procedures=4,
        n_medications=8,
        n_profile=4,
        n_labels=8,
        dim=32,
        heads=2,
        visit_layers=1,
        dropout=0.0,
    )
    dx, px, med, mask, profile = random_inputs(cfg, b=128, v=3, seed=6, cd=3)
    current = dx[:, -1]
    y = torch.zeros(128, cfg.n_labels)
    for j in range(cfg.n_labels):
        y[:, j] = (current == 2 + j).any(dim=1).float()
    model = LeaderStudent(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        logits, _ = model(dx, px, med, mask, profile)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


@pytest.mark.slow
def test_onnx_export_matches_torch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    torch.manual_seed(5)
    model = LeaderStudent(SMALL).eval()
    batch, visits = Dim("batch"), Dim("visits")
    dynamic_shapes = (
        {0: batch, 1: visits, 2: Dim("n_dx")},
        {0: batch, 1: visits, 2: Dim("n_px")},
        {0: batch, 1: visits, 2: Dim("n_med")},
        {0: batch, 1: visits},
        {0: batch, 1: Dim("n_profile")},
    )
    path = tmp_path / "student.onnx"
    t0 = time.perf_counter()
    torch.onnx.export(
        model,
        random_inputs(SMALL, b=3, v=4, seed=7),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes,
        input_names=list(INPUT_NAMES),
        output_names=["logits", "features"],
    )
    print(f"export took {time.perf_counter() - t0:.1f} s")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, v, cd in ((2, 7, 9), (1, 12, 5)):
        args = random_inputs(SMALL, b=b, v=v, seed=8, cd=cd)
        got = session.run(
            ["logits", "features"], {n: a.numpy() for n, a in zip(INPUT_NAMES, args, strict=True)}
        )
        with torch.no_grad():
            want = model(*args)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4)


def test_repeat_head_lifts_the_previous_visits_drugs():
    cfg = StudentConfig(
        n_diagnoses=20,
        n_procedures=10,
        n_medications=12,
        n_profile=6,
        n_labels=10,
        dim=16,
        heads=2,
        visit_layers=1,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = LeaderStudent(cfg).eval()
    with torch.no_grad():
        model.repeat_last.fill_(3.0)
    dx = torch.tensor([[[3, 4], [5, 0]]])  # two visits: one earlier, the current
    px = torch.zeros(1, 2, 1, dtype=torch.long)
    mask = torch.ones(1, 2)
    profile = torch.tensor([[2, 3]])
    without = torch.zeros(1, 2, 2, dtype=torch.long)
    with_prev = torch.tensor([[[4, 7], [0, 0]]])  # medication ids 4 and 7 = labels 2 and 5
    base, _ = model(dx, px, without, mask, profile)
    lifted, _ = model(dx, px, with_prev, mask, profile)
    diff = (lifted - base)[0]
    # the med-set embedding also changes the encoder output a little; the repeat term adds 3
    assert diff[2] > 2.0 and diff[5] > 2.0
    others = [i for i in range(10) if i not in (2, 5)]
    assert diff[others].abs().max() < 1.0
    # the current visit's own slot never counts as history
    cur_only = torch.tensor([[[0, 0], [4, 7]]])
    same, _ = model(dx, px, cur_only, mask, profile)
    assert (same - base)[0, 2] < 1.0


def _random_wide(model: LeaderStudent, seed: int) -> LeaderStudent:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.wide.weight.copy_(torch.randn(model.wide.weight.shape, generator=g))
    return model


def test_wide_path_is_a_sum_of_code_rows():
    """wide logits = sum of the rows of the current dx/px, previous visit's drugs and profile."""
    cfg = StudentConfig(**{**SMALL.to_dict(), "wide": True})
    torch.manual_seed(4)
    model = _random_wide(LeaderStudent(cfg), seed=5).eval()
    dx, px, med, mask, profile = random_inputs(cfg, b=3, v=4, seed=6)
    w = model.wide.weight.detach()
    want = torch.zeros(3, cfg.n_labels)
    for i in range(3):
        for ids, off in (
            (dx[i, -1], model.dx_offset),
            (px[i, -1], model.px_offset),
            (med[i, -2], model.med_offset),
            (profile[i], model.profile_offset),
        ):
            for t in ids[ids != 0]:
                want[i] += w[int(t) + off]
    torch.testing.assert_close(model._wide_logits(dx, px, med, profile), want)
    # one visit only: no previous visit, the wide path reads the current visit and profile
    one = model._wide_logits(dx[:, -1:], px[:, -1:], med[:, -1:], profile)
    assert one.shape == (3, cfg.n_labels) and torch.isfinite(one).all()


def test_wide_student_keeps_padding_invariance_and_old_configs_load():
    cfg = StudentConfig(**{**SMALL.to_dict(), "wide": True})
    torch.manual_seed(7)
    model = _random_wide(LeaderStudent(cfg), seed=8).eval()
    dx, px, med, mask, profile = random_inputs(cfg, b=4, v=5, seed=9)
    padded = (
        F.pad(F.pad(dx, (0, 2)), (0, 0, 3, 0)),
        F.pad(F.pad(px, (0, 1)), (0, 0, 3, 0)),
        F.pad(F.pad(med, (0, 3)), (0, 0, 3, 0)),
        torch.cat([torch.zeros(4, 3), mask], dim=1),
        F.pad(profile, (0, 2)),
    )
    with torch.no_grad():
        for a, c in zip(model(dx, px, med, mask, profile), model(*padded), strict=True):
            torch.testing.assert_close(a, c, rtol=0, atol=1e-5)
    # a config saved before the wide path existed describes a model without one
    old = {k: v for k, v in cfg.to_dict().items() if k != "wide"}
    assert StudentConfig.from_dict(old).wide is False
    assert "wide.weight" not in LeaderStudent(StudentConfig.from_dict(old)).state_dict()


def test_mean_wide_path_averages_the_current_codes_times_its_scale():
    """wide_codes="mean": the current visit's dx/px rows are averaged and multiplied by
    wide_codes_scale; the previous visit's drugs and the profile are still summed. One code
    entered alone then moves the scores `scale` times as much as under "sum"."""
    cfg = StudentConfig(**{**SMALL.to_dict(), "wide_codes": "mean", "wide_codes_scale": 7.5})
    torch.manual_seed(11)
    model = _random_wide(LeaderStudent(cfg), seed=12).eval()
    dx, px, med, mask, profile = random_inputs(cfg, b=3, v=4, seed=13)
    w = model.wide.weight.detach()
    want = torch.zeros(3, cfg.n_labels)
    for i in range(3):
        codes = [int(t) + model.dx_offset for t in dx[i, -1] if t != 0]
        codes += [int(t) + model.px_offset for t in px[i, -1] if t != 0]
        want[i] = 7.5 * w[codes].mean(0)
        for ids, off in ((med[i, -2], model.med_offset), (profile[i], model.profile_offset)):
            for t in ids[ids != 0]:
                want[i] += w[int(t) + off]
    torch.testing.assert_close(model._wide_logits(dx, px, med, profile), want)
    # a visit with no current codes at all reads zero from them (no division by zero)
    empty = model._wide_logits(dx * 0, px * 0, med, profile)
    assert torch.isfinite(empty).all()
    # one diagnosis alone: scale x its row, against its row alone under "sum"
    summed = LeaderStudent(StudentConfig(**{**cfg.to_dict(), "wide_codes": "sum"}))
    summed.load_state_dict(model.state_dict())
    one = torch.zeros_like(dx)
    one[:, -1, 0] = dx[:, -1, 0]
    none = torch.zeros_like(px)
    diff_mean = model._wide_logits(one, none, med, profile) - model._wide_logits(
        one * 0, none, med, profile
    )
    diff_sum = summed._wide_logits(one, none, med, profile) - summed._wide_logits(
        one * 0, none, med, profile
    )
    torch.testing.assert_close(diff_mean, 7.5 * diff_sum)


def test_sqrt_wide_path_is_the_sum_times_the_root_of_scale_over_n():
    cfg = StudentConfig(**{**SMALL.to_dict(), "wide_codes": "sqrt", "wide_codes_scale": 9.0})
    torch.manual_seed(14)
    model = _random_wide(LeaderStudent(cfg), seed=15).eval()
    summed = LeaderStudent(StudentConfig(**{**cfg.to_dict(), "wide_codes": "sum"}))
    summed.load_state_dict(model.state_dict())
    dx, px, med, mask, profile = random_inputs(cfg, b=3, v=4, seed=16)
    n = ((dx[:, -1] != 0).sum(1) + (px[:, -1] != 0).sum(1)).float()
    no_dx, no_px = torch.zeros_like(dx), torch.zeros_like(px)
    codes_sum = summed._wide_logits(dx, px, med, profile) - summed._wide_logits(
        no_dx, no_px, med, profile
    )
    got = model._wide_logits(dx, px, med, profile) - model._wide_logits(no_dx, no_px, med, profile)
    torch.testing.assert_close(got, codes_sum * (9.0 / n).sqrt().unsqueeze(-1))


def test_mean_wide_config_is_validated_and_old_configs_read_as_sum():
    with pytest.raises(ValueError, match="wide_codes must be"):
        StudentConfig(**{**SMALL.to_dict(), "wide_codes": "max"})
    for bad in (0.0, -1.0, True, "2"):
        with pytest.raises(ValueError, match="wide_codes_scale"):
            StudentConfig(**{**SMALL.to_dict(), "wide_codes_scale": bad})
    old = {k: v for k, v in SMALL.to_dict().items() if not k.startswith("wide_codes")}
    cfg = StudentConfig.from_dict(old)
    assert cfg.wide_codes == "sum" and cfg.wide_codes_scale == 1.0
    mean = StudentConfig(**{**SMALL.to_dict(), "wide_codes": "mean", "wide_codes_scale": 3.0})
    assert StudentConfig.from_dict(mean.to_dict()) == mean
