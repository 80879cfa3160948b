"""The two ways to compute the medication student's logits: `OrtBackend` (the bundle's int8
ONNX model in onnxruntime) and `NumpyBackend` (the fp32 student re-implemented in numpy from
`weights.npz`, for builds without onnxruntime), with the few numpy math functions it needs.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.medication.bundle import StudentShape
from app.onnx_session import ort_session
from contract.bundle import BundleError
from contract.layout import INPUT_NAMES, LABEL_OFFSET, OUTPUT_NAMES, PAD_ID

MASK_VALUE = -1e4  # additive attention mask of the student
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the student uses

__all__ = ["NumpyBackend", "OrtBackend", "erf", "gelu", "sigmoid"]


# --------------------------------------------------------------------------------------------
# math


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + t (a2 + ...)) exp(-x^2), t = 1 / (1 + p x),
# for x >= 0, |error| <= 1.5e-7; odd symmetry for x < 0. Evaluated in float64.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, |error| <= 1.5e-7 (float64 in, float64 out)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * z)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return np.copysign(1.0 - poly * np.exp(-z * z), x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch.nn.GELU(); keeps x's float dtype."""
    x64 = np.asarray(x, dtype=np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 * (1.0 / math.sqrt(2.0))))).astype(x.dtype, copy=False)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * w + b


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function; float32 out."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# backends


def _check_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}; expected {list(INPUT_NAMES)}")
    out = {n: np.ascontiguousarray(inputs[n], dtype=np.int64) for n in ("dx", "px", "med")}
    out["visit_mask"] = np.ascontiguousarray(inputs["visit_mask"], dtype=np.float32)
    out["profile"] = np.ascontiguousarray(inputs["profile"], dtype=np.int64)
    b, v = out["visit_mask"].shape
    for n in ("dx", "px", "med"):
        if out[n].ndim != 3 or out[n].shape[:2] != (b, v):
            raise ValueError(f"inputs[{n!r}] has shape {out[n].shape}; expected ({b}, {v}, N)")
    if out["profile"].ndim != 2 or out["profile"].shape[0] != b:
        raise ValueError(f"inputs['profile'] has shape {out['profile'].shape}; expected ({b}, P)")
    return out


class OrtBackend:
    """The bundle's ONNX model in an onnxruntime session (`app.onnx_session.ort_session`)."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        self.session = ort_session(self.model_path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = sorted(set(self.input_names) - set(INPUT_NAMES))
        outputs = [o.name for o in self.session.get_outputs()]
        if unknown or "logits" not in outputs:
            raise BundleError(
                f"{self.model_path.name}: graph inputs {self.input_names} / outputs {outputs} "
                f"are not the student's {list(INPUT_NAMES)} / {list(OUTPUT_NAMES)}"
            )

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """-> logits [B, n_labels], float32."""
        arrays = _check_inputs(inputs)
        feed = {n: arrays[n] for n in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)


def _expected_shapes(
    s: StudentShape, repeat_head: bool, wide: bool = False
) -> dict[str, tuple[int, ...]]:
    d = s.dim
    n_embed = s.n_diagnoses + s.n_procedures + s.n_medications + s.n_profile
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (n_embed, d)}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    for kind in ("dx_set.0", "px_set.0", "med_set.0", "profile_proj", "med_align"):
        linear(kind, d, d)
    linear("visit_proj", 3 * d, d)
    shapes["slot_embed.weight"] = (s.max_visits, d)
    for i in range(s.visit_layers):
        p = f"blocks.{i}"
        for ln in ("ln1", "ln2"):
            shapes[f"{p}.{ln}.weight"] = (d,)
            shapes[f"{p}.{ln}.bias"] = (d,)
        for proj in ("q", "k", "v", "out"):
            linear(f"{p}.attn.{proj}", d, d)
        linear(f"{p}.mlp.0", d, 4 * d)
        linear(f"{p}.mlp.2", 4 * d, d)
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    linear("feature", 2 * d, d)
    linear("head.0", d, d)
    linear("head.3", d, s.n_labels)
    if repeat_head:
        shapes["repeat_last"] = (s.n_labels,)
        shapes["repeat_mean"] = (s.n_labels,)
    if wide:
        shapes["wide.weight"] = (n_embed, s.n_labels)
    return shapes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path.name}: not a readable .npz of arrays ({e})") from e


SCALE_SUFFIX = ".qscale"  # export.medication.weights: int8 table + per-row float32 scale


def _dequantize(raw: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """int8 tables with a "<name>.qscale" row scale -> float32 (other arrays as they are)."""
    out = {k: v for k, v in raw.items() if not k.endswith(SCALE_SUFFIX)}
    for key in (k for k in raw if k.endswith(SCALE_SUFFIX)):
        name = key[: -len(SCALE_SUFFIX)]
        q, scale = out.get(name), raw[key]
        if q is None or q.dtype != np.int8 or q.ndim != 2 or scale.shape != (q.shape[0],):
            raise BundleError(f"{where}: {key} does not scale an int8 table {name}")
        out[name] = q.astype(np.float32) * scale.astype(np.float32)[:, None]
    return out


class NumpyBackend:
    """The student's forward pass in numpy (float32), from `weights.npz` and the config alone.

    Mirrors `distill.medication.student.LeaderStudent` in eval mode (dropout is the identity).
    """

    name = "numpy"

    def __init__(self, weights_npz: str | Path, student_config: StudentShape | Mapping) -> None:
        self.weights_path = Path(weights_npz)
        where = self.weights_path.name
        cfg = StudentShape.from_dict(student_config)
        raw = _dequantize(_read_npz(self.weights_path), where)
        repeat = cfg.repeat_head if cfg.repeat_head is not None else "repeat_last" in raw
        # the wide path (a linear model over code ids) exists when the student was trained with
        # one; weights files from before it have no "wide.weight" and score as they always did
        wide = "wide.weight" in raw
        expected = _expected_shapes(cfg, repeat, wide)
        missing = sorted(set(expected) - set(raw))
        extra = sorted(set(raw) - set(expected))
        if missing or extra:
            raise BundleError(
                f"{where}: does not fit the student config (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for k, shape in expected.items():
            if raw[k].shape != shape:
                raise BundleError(f"{where}: {k} has shape {raw[k].shape}, expected {shape}")
            if not np.issubdtype(raw[k].dtype, np.floating):
                raise BundleError(f"{where}: {k} is {raw[k].dtype}, not floating point")
        self.config = cfg
        self.repeat_head = bool(repeat)
        self.wide = wide
        f32 = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in raw.items()}
        self._prepare(f32)

    def _prepare(self, w: dict[str, np.ndarray]) -> None:
        """Pre-transpose the Linear weights (y = x @ W^T + b) and fuse q, k, v."""
        c = self.config

        def lin(name: str) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(w[f"{name}.weight"].T), w[f"{name}.bias"]

        self.embed = w["embed.weight"]
        self.offsets = {
            "dx": 0,
            "px": c.n_diagnoses,
            "med": c.n_diagnoses + c.n_procedures,
            "profile": c.n_diagnoses + c.n_procedures + c.n_medications,
        }
        self.sizes = {
            "dx": c.n_diagnoses,
            "px": c.n_procedures,
            "med": c.n_medications,
            "profile": c.n_profile,
        }
        self.dx_set, self.px_set, self.med_set = lin("dx_set.0"), lin("px_set.0"), lin("med_set.0")
        self.visit_proj = lin("visit_proj")
        self.slot_embed = w["slot_embed.weight"]
        self.profile_proj = lin("profile_proj")
        self.blocks = []
        for i in range(c.visit_layers):
            p = f"blocks.{i}"
            qkv_w = np.concatenate([w[f"{p}.attn.{n}.weight"] for n in "qkv"], axis=0)
            qkv_b = np.concatenate([w[f"{p}.attn.{n}.bias"] for n in "qkv"], axis=0)
            self.blocks.append(
                {
                    "ln1": (w[f"{p}.ln1.weight"], w[f"{p}.ln1.bias"]),
                    "qkv": (np.ascontiguousarray(qkv_w.T), qkv_b),
                    "out": lin(f"{p}.attn.out"),
                    "ln2": (w[f"{p}.ln2.weight"], w[f"{p}.ln2.bias"]),
                    "mlp0": lin(f"{p}.mlp.0"),
                    "mlp2": lin(f"{p}.mlp.2"),
                }
            )
        self.ln_f = (w["ln_f.weight"], w["ln_f.bias"])
        self.feature = lin("feature")
        self.head0, self.head3 = lin("head.0"), lin("head.3")
        if self.repeat_head:
            # label l is medication id l + 2 (the model's fixed med_to_label table)
            table = np.zeros((c.n_medications, c.n_labels), dtype=np.float32)
            n = min(c.n_medications - LABEL_OFFSET, c.n_labels)
            table[LABEL_OFFSET + np.arange(n), np.arange(n)] = 1.0
            self.med_to_label = table
            self.repeat_last = w["repeat_last"]
            self.repeat_mean = w["repeat_mean"]
        if self.wide:
            self.wide_weight = w["wide.weight"]

    def _code_set(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """ids [..., N] -> masked mean of their embeddings [..., D] (pads, id 0, left out)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.sizes[kind]):
            raise ValueError(f"inputs[{kind!r}] has ids outside 0..{self.sizes[kind] - 1}")
        mask = (ids != PAD_ID).astype(np.float32)
        emb = self.embed[ids + self.offsets[kind]]  # [..., N, D]
        total = np.matmul(mask[..., None, :], emb)[..., 0, :]
        count = np.maximum(mask.sum(axis=-1, keepdims=True), np.float32(1.0))
        return total / count

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """-> logits [B, n_labels], float32."""
        return self.forward(inputs)[0]

    def forward(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits [B, n_labels], features [B, dim]), as the student's forward."""
        a = _check_inputs(inputs)
        dx, px, med, mask, profile = (a[n] for n in INPUT_NAMES)
        b, n_visits = mask.shape
        d = self.config.dim
        h = self.config.heads
        hd = d // h

        def linear(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            return x @ wb[0] + wb[1]

        visits = np.concatenate(
            [
                gelu(linear(self._code_set(dx, "dx"), self.dx_set)),
                gelu(linear(self._code_set(px, "px"), self.px_set)),
                gelu(linear(self._code_set(med, "med"), self.med_set)),
            ],
            axis=-1,
        )  # [B, V, 3D]
        distance = np.minimum(np.arange(n_visits)[::-1], self.config.max_visits - 1)
        x = linear(visits, self.visit_proj) + self.slot_embed[distance]  # [B, V, D]
        token = linear(self._code_set(profile, "profile"), self.profile_proj)[:, None, :]
        x = np.concatenate([token, x], axis=1)  # [B, 1 + V, D]
        t = n_visits + 1

        keep = np.concatenate([np.ones((b, 1), dtype=np.float32), mask], axis=1)
        bias = ((np.float32(1.0) - keep) * np.float32(MASK_VALUE))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(hd))
        for blk in self.blocks:
            y = _layer_norm(x, *blk["ln1"])
            qkv = linear(y, blk["qkv"]).reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, hd]
            scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * scale + bias
            att = np.matmul(_softmax(scores), v).transpose(0, 2, 1, 3).reshape(b, t, d)
            x = x + linear(att, blk["out"])
            y = _layer_norm(x, *blk["ln2"])
            x = x + linear(gelu(linear(y, blk["mlp0"])), blk["mlp2"])
        x = _layer_norm(x, *self.ln_f)

        features = linear(np.concatenate([x[:, -1], x[:, 0]], axis=-1), self.feature)
        logits = linear(gelu(linear(features, self.head0)), self.head3)
        if self.repeat_head:
            logits = logits + self._repeat_logits(med, mask)
        if self.wide:
            logits = logits + self._wide_logits(dx, px, med, profile)
        return logits.astype(np.float32, copy=False), features.astype(np.float32, copy=False)

    def _repeat_logits(self, med: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hot = self.med_to_label[med].max(axis=2)  # [B, V, L]
        hist = np.concatenate([np.zeros_like(hot[:, :1]), hot[:, :-1]], axis=1)
        n_hist = np.maximum(mask.sum(axis=1, keepdims=True) - np.float32(1.0), np.float32(1.0))
        return self.repeat_last * hist[:, -1] + self.repeat_mean * hist.sum(axis=1) / n_hist

    def _wide_sum(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """ids [B, N] -> sum of their wide rows [B, L] (pads, id 0, left out)."""
        mask = (ids != PAD_ID).astype(np.float32)
        rows = self.wide_weight[ids + self.offsets[kind]]  # [B, N, L]
        return np.matmul(mask[:, None, :], rows)[:, 0, :]

    def _wide_logits(self, dx, px, med, profile) -> np.ndarray:
        """Linear logits over code ids: current dx and px, previous visit's drugs, profile."""
        prev_med = med[:, -2] if med.shape[1] >= 2 else np.zeros_like(med[:, 0])
        return (
            self._wide_sum(dx[:, -1], "dx")
            + self._wide_sum(px[:, -1], "px")
            + self._wide_sum(prev_med, "med")
            + self._wide_sum(profile, "profile")
        )
