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


# GELU for the numpy backend's hot path: x * Phi(x), with Phi (the normal CDF, from math.erf)
# tabulated on a grid of step 1/512 over [-8, 8] and interpolated linearly (|error| < 3e-7 |x|;
# Phi is 0 and 1 beyond, to float32 precision). np.interp is one call but ~0.1 us an element
# here; the explicit lookup is a fixed ~9 calls: the smaller arrays take the first.
_PHI_STEP = 512
_PHI_X = np.linspace(-8.0, 8.0, 16 * _PHI_STEP + 1)
_PHI = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in _PHI_X])
_PHI[0], _PHI[-1] = 0.0, 1.0  # 6e-16 from them: so that huge |x| gives 0 and x exactly
_PHI32 = _PHI.astype(np.float32)
_PHI_SLOPE32 = np.append(np.diff(_PHI), 0.0).astype(np.float32)
_INTERP_MAX = 160  # elements


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact-GELU to ~3e-7 relative, float32 in and out (see `_PHI`)."""
    if x.size <= _INTERP_MAX:
        return np.multiply(x, np.interp(x, _PHI_X, _PHI), dtype=np.float32, casting="same_kind")
    u = x * np.float32(_PHI_STEP)
    u += np.float32(8 * _PHI_STEP)
    np.clip(u, -1.0, len(_PHI), out=u)  # beyond the grid: Phi's end values, slope 0
    i = u.astype(np.intp)
    u -= i
    u *= _PHI_SLOPE32.take(i, mode="clip")
    u += _PHI32.take(i, mode="clip")
    u *= x
    return u


def _normalize(x: np.ndarray, mean_vec: np.ndarray) -> np.ndarray:
    """LayerNorm without its scale and shift, over sqrt(D) (the three are folded into the
    next product): (x - mean) / sqrt(sum (x - mean)^2 + D eps). `mean_vec`: [D, 1] of 1/D."""
    centred = x - x @ mean_vec
    ss = np.einsum("...i,...i->...", centred, centred)[..., None]
    ss += np.float32(x.shape[-1] * LAYER_NORM_EPS)
    ss **= np.float32(-0.5)
    centred *= ss
    return centred


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
        # how the wide path reads the current codes (StudentShape.wide_codes): "sum" of their
        # rows, or that sum times (wide_codes_scale / n)^power (0.0 here means "sum")
        self.wide_mean = cfg.wide_codes_scale if cfg.wide_codes != "sum" else 0.0
        self.wide_power = np.float32(0.5 if cfg.wide_codes == "sqrt" else 1.0)
        f32 = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in raw.items()}
        self._prepare(f32)

    def _prepare(self, w: dict[str, np.ndarray]) -> None:
        """Precompute the compact form (the same algebra as `export.medication.compact`): per
        code kind a table [embedding @ W_set^T | 1] whose pad row is zero (a code set's masked
        mean through its Linear layer is then one fancy index, one sum and one division),
        LayerNorm scales and shifts folded into the products that follow them, q, k, v fused
        with the attention scale folded into q, the slot embedding plus the visit projection's
        bias as one table, and the wide rows with zero pad rows (the profile's beside its
        embedding product)."""
        c = self.config
        d, h = c.dim, c.heads
        f64 = {k: np.asarray(v, np.float64) for k, v in w.items()}
        n = {
            "dx": c.n_diagnoses,
            "px": c.n_procedures,
            "med": c.n_medications,
            "profile": c.n_profile,
        }
        self.sizes = n
        layers = {"dx": "dx_set.0", "px": "px_set.0", "med": "med_set.0", "profile": "profile_proj"}
        embed = f64["embed.weight"]
        start = 0
        tables = {}
        for kind in ("dx", "px", "med", "profile"):
            rows = slice(start, start + n[kind])
            parts = [embed[rows] @ f64[f"{layers[kind]}.weight"].T, np.ones((n[kind], 1))]
            if self.wide:
                wide_rows = f64["wide.weight"][rows].copy()
                wide_rows[PAD_ID] = 0.0
                if kind == "profile":
                    parts.append(wide_rows)
                else:
                    tables[f"wide_{kind}"] = wide_rows
            table = np.concatenate(parts, axis=1)
            table[PAD_ID] = 0.0
            tables[kind] = table
            start += n[kind]
        f32 = {k: np.ascontiguousarray(v, np.float32) for k, v in tables.items()}
        self.t_dx, self.t_px, self.t_med, self.t_profile = (
            f32[k] for k in ("dx", "px", "med", "profile")
        )
        if self.wide:
            # one table for the current visit's codes and the previous visit's drugs
            self.wide_codes = np.ascontiguousarray(
                np.concatenate([f32[f"wide_{k}"] for k in ("dx", "px", "med")])
            )
            self.wide_offsets = (n["dx"], n["dx"] + n["px"])

        def as32(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a, dtype=np.float32)

        self.set_bias = as32(
            np.concatenate([f64[f"{k}.bias"] for k in ("dx_set.0", "px_set.0", "med_set.0")])
        )
        self.w_visit = as32(f64["visit_proj.weight"].T)
        self.slot = as32(f64["slot_embed.weight"] + f64["visit_proj.bias"])
        self._slots: dict[int, np.ndarray] = {}
        self.profile_bias = as32(f64["profile_proj.bias"])

        root_d = math.sqrt(d)  # `_normalize` returns the normalised x over sqrt(D)
        self.mean_vec = np.full((d, 1), 1.0 / d, dtype=np.float32)

        def folded(ln: str, lin_w: np.ndarray, lin_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """LayerNorm(x) @ W + b = norm(x) @ (g * W) + (beta @ W + b)."""
            g, beta = f64[f"{ln}.weight"], f64[f"{ln}.bias"]
            return as32(g[:, None] * lin_w * root_d), as32(beta @ lin_w + lin_b)

        scale = 1.0 / math.sqrt(d // h)
        self.blocks = []
        for i in range(c.visit_layers):
            p = f"blocks.{i}"
            qkv_w = np.concatenate([f64[f"{p}.attn.{k}.weight"].T for k in "qkv"], axis=1)
            qkv_b = np.concatenate([f64[f"{p}.attn.{k}.bias"] for k in "qkv"])
            qkv_w[:, :d] *= scale
            qkv_b[:d] *= scale
            self.blocks.append(
                {
                    "qkv": folded(f"{p}.ln1", qkv_w, qkv_b),
                    "out": (as32(f64[f"{p}.attn.out.weight"].T), as32(f64[f"{p}.attn.out.bias"])),
                    "mlp0": folded(f"{p}.ln2", f64[f"{p}.mlp.0.weight"].T, f64[f"{p}.mlp.0.bias"]),
                    "mlp2": (as32(f64[f"{p}.mlp.2.weight"].T), as32(f64[f"{p}.mlp.2.bias"])),
                }
            )
        # features = [ln_f(x_last), ln_f(x_profile)] @ W^T + b, the LayerNorm folded per half
        wf = f64["feature.weight"].T  # [2D, D]
        g, beta = f64["ln_f.weight"], f64["ln_f.bias"]
        self.feature = (
            as32(np.concatenate([g[:, None] * wf[:d], g[:, None] * wf[d:]]) * root_d),
            as32(beta @ wf[:d] + beta @ wf[d:] + f64["feature.bias"]),
        )
        self.head0 = (as32(f64["head.0.weight"].T), as32(f64["head.0.bias"]))
        self.head3 = (as32(f64["head.3.weight"].T), as32(f64["head.3.bias"]))
        if self.repeat_head:
            # label l is medication id l + 2 (the model's fixed med_to_label table)
            self.n_repeat = min(c.n_medications - LABEL_OFFSET, c.n_labels)
            self.repeat_last = as32(f64["repeat_last"][: self.n_repeat])
            self.repeat_mean = as32(f64["repeat_mean"][: self.n_repeat])
            self._hot_index: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _check_ids(self, arrays: Mapping[str, np.ndarray]) -> None:
        """ValueError naming the input whose ids fall outside its vocabulary."""
        kinds = (("dx", "dx"), ("px", "px"), ("med", "med"), ("profile", "profile"))
        for name, kind in kinds:
            ids = arrays[name]
            if ids.size and (ids.min() < 0 or ids.max() >= self.sizes[kind]):
                raise ValueError(f"inputs[{kind!r}] has ids outside 0..{self.sizes[kind] - 1}")

    def _slot_rows(self, n_visits: int) -> np.ndarray:
        """Slot embedding + visit projection bias of each slot: index = distance from the
        current visit (the last slot), clamped to the last learned slot."""
        rows = self._slots.get(n_visits)
        if rows is None:
            distance = np.minimum(np.arange(n_visits)[::-1], self.config.max_visits - 1)
            rows = self._slots[n_visits] = np.ascontiguousarray(self.slot[distance])
        return rows

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """-> logits [B, n_labels], float32."""
        return self.forward(inputs)[0]

    def forward(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits [B, n_labels], features [B, dim]), as the student's forward."""
        a = _check_inputs(inputs)
        dx, px, med, mask, profile = (a[n] for n in INPUT_NAMES)
        if (
            min(dx.min(initial=0), px.min(initial=0), med.min(initial=0), profile.min(initial=0))
            < 0
        ):
            self._check_ids(a)
        try:
            return self._forward(dx, px, med, mask, profile)
        except IndexError:  # an id past its vocabulary: say which
            self._check_ids(a)
            raise

    def _forward(self, dx, px, med, mask, profile) -> tuple[np.ndarray, np.ndarray]:
        b, n_visits = mask.shape
        c = self.config
        d, h = c.dim, c.heads
        hd = d // h
        t = n_visits + 1
        f1 = np.float32(1.0)

        # code sets: sums and counts of the product rows, then the masked means
        sets = np.empty((b, n_visits, 3, d + 1), dtype=np.float32)  # sums | counts, per kind
        for k, (table, ids) in enumerate(((self.t_dx, dx), (self.t_px, px), (self.t_med, med))):
            np.add.reduce(table.take(ids, axis=0), axis=2, out=sets[:, :, k])
        means = sets[..., :d] / np.maximum(sets[..., d:], f1)
        visits = means.reshape(b, n_visits, 3 * d)
        visits += self.set_bias
        x = np.empty((b, t, d), dtype=np.float32)
        np.matmul(_gelu(visits), self.w_visit, out=x[:, 1:])
        x[:, 1:] += self._slot_rows(n_visits)
        prof = np.add.reduce(self.t_profile.take(profile, axis=0), axis=1)  # [B, D + 1 (+ L)]
        np.divide(prof[:, :d], np.maximum(prof[:, d : d + 1], f1), out=x[:, 0])
        x[:, 0] += self.profile_bias

        bias = np.zeros((b, 1, 1, t), dtype=np.float32)
        np.multiply(mask - f1, np.float32(-MASK_VALUE), out=bias[:, 0, 0, 1:])
        mean_vec = self.mean_vec
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            qkv = _normalize(x, mean_vec) @ blk["qkv"][0]
            qkv += blk["qkv"][1]
            qkv = qkv.reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)  # [3, B, H, T, hd]
            q = qkv[0]
            if i == last:  # only the current visit and the profile token are read after it
                q, x = q[:, :, [-1, 0]], x[:, [-1, 0]]
            scores = np.matmul(q, qkv[1].transpose(0, 1, 3, 2))
            scores += bias
            att = np.matmul(_softmax(scores), qkv[2]).transpose(0, 2, 1, 3)
            x += att.reshape(b, -1, d) @ blk["out"][0]
            x += blk["out"][1]
            hidden = _normalize(x, mean_vec) @ blk["mlp0"][0]
            hidden += blk["mlp0"][1]
            x += _gelu(hidden) @ blk["mlp2"][0]
            x += blk["mlp2"][1]
        features = _normalize(x, mean_vec).reshape(b, 2 * d) @ self.feature[0]
        features += self.feature[1]
        hidden = features @ self.head0[0]
        hidden += self.head0[1]
        logits = _gelu(hidden) @ self.head3[0]
        logits += self.head3[1]
        if self.repeat_head:
            self._add_repeat(logits, med, mask)
        if self.wide:
            o_px, o_med = self.wide_offsets
            parts = [dx[:, -1], px[:, -1] + o_px]
            if self.wide_mean:  # the current codes' rows scaled (counts: the sets' column d)
                codes = self.wide_codes.take(np.concatenate(parts, axis=1), axis=0).sum(axis=1)
                n_cur = np.maximum(sets[:, -1, 0, d] + sets[:, -1, 1, d], f1)
                factor = np.float32(self.wide_mean) / n_cur
                if self.wide_power != 1.0:
                    factor = np.sqrt(factor)
                logits += codes * factor[:, None]
                parts = []
            if n_visits >= 2:
                parts.append(med[:, -2] + o_med)
            if parts:
                logits += np.add.reduce(
                    self.wide_codes.take(np.concatenate(parts, axis=1), axis=0), axis=1
                )
            logits += prof[:, d + 1 :]
        return logits, features

    def _add_repeat(self, logits: np.ndarray, med: np.ndarray, mask: np.ndarray) -> None:
        """Per-drug weights times (in the previous visit, share of earlier visits), added."""
        b, n_visits, _ = med.shape
        if n_visits < 2:
            return  # no earlier visit: both terms are zero
        rows = self._hot_index.get((b, n_visits))
        if rows is None:
            rows = self._hot_index[(b, n_visits)] = (
                np.arange(b)[:, None, None],
                np.arange(n_visits - 1)[None, :, None],
            )
        hot = np.zeros((b, n_visits - 1, self.config.n_medications), dtype=np.float32)
        hot[rows[0], rows[1], med[:, :-1]] = 1.0  # a drug given twice in a visit counts once
        hot = hot[..., LABEL_OFFSET : LABEL_OFFSET + self.n_repeat]  # [B, V - 1, L']
        n_hist = mask.sum(axis=1, keepdims=True)
        n_hist -= np.float32(1.0)
        np.maximum(n_hist, np.float32(1.0), out=n_hist)
        rep = logits[:, : self.n_repeat]
        rep += self.repeat_last * hot[:, -1]
        rep += hot.sum(axis=1) * (self.repeat_mean / n_hist)
