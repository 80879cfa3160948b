"""The student's weights as a plain `.npz` for the app's numpy fallback (no torch, no pickle).

The archive holds every `state_dict` tensor under its `state_dict` name, as float32, and nothing
else: the config travels in the bundle manifest. Non-persistent buffers (`med_to_label`) are not
in the state dict; the runtime rebuilds them from the config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contract.files import atomic_path
from distill.medication.student import LeaderStudent, StudentConfig


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
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    # float16 halves the bundle; the runtime computes in float32 either way
    arrays = {k: v.astype(dtype) for k, v in numpy_state(model).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # a file object, not a name: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)
    return path
