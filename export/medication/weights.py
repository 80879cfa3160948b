"""The student's weights as a plain `.npz` for the app's numpy fallback (no torch, no pickle).

The archive holds every `state_dict` tensor under its `state_dict` name, as float32 (or float16),
and nothing else: the config travels in the bundle manifest. With dtype "int8" the large tables
(2-D, at least `INT8_MIN_SIZE` values: the code embeddings and the wide table) are stored as int8
with one float32 scale per row under "<name>.qscale" (symmetric, scale = max |row| / 127), the
rest as float16; the runtime multiplies them back to float32. Non-persistent buffers
(`med_to_label`) are not in the state dict; the runtime rebuilds them from the config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contract.files import atomic_path
from distill.medication.student import LeaderStudent, StudentConfig

INT8_MIN_SIZE = 16384
SCALE_SUFFIX = ".qscale"


def quantize_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q [R, C] int8, scale [R] float32), a ~= q * scale[:, None]."""
    peak = np.abs(a).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def numpy_state(model: LeaderStudent) -> dict[str, np.ndarray]:
    """The model's state dict as float32 numpy arrays (copies, C-contiguous)."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if not torch.is_floating_point(tensor):
            raise TypeError(f"state_dict entry {name!r} is {tensor.dtype}, not a float tensor")
        out[name] = np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
    return out


def save_numpy_weights(
    model: LeaderStudent, config: StudentConfig, path: Path, dtype: str = "float32"
) -> Path:
    """Write `model`'s weights to `path` (an `.npz`), atomically; returns the path.

    `config` must be the model's own config: it is what the manifest will describe, and the
    numpy runtime rebuilds the network from it alone.
    """
    model_config = getattr(model, "config", None)
    if model_config != config:
        raise ValueError(
            f"config does not match the model's own config: {config} != {model_config}"
        )
    if dtype not in ("float32", "float16", "int8"):
        raise ValueError(f"dtype must be float32, float16 or int8, got {dtype!r}")
    # float16 halves the bundle, int8 tables quarter them; the runtime computes in float32
    arrays = {}
    for k, v in numpy_state(model).items():
        if dtype == "int8" and v.ndim == 2 and v.size >= INT8_MIN_SIZE:
            arrays[k], arrays[k + SCALE_SUFFIX] = quantize_rows(v)
        else:
            arrays[k] = v.astype("float16" if dtype == "int8" else dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not a name: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)
    return path
