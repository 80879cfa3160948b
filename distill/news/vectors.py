"""The teacher's vectors as files: what the student distils from.

After training, `cache_teacher_vectors` writes the item vectors ``[n_items, dim]`` and one user
vector per impression, as float16 safetensors with a sidecar JSON (ids, backbone, dims) each;
`load_teacher_vectors` reads them back, checked against each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_path, atomic_write_json

__all__ = ["VECTORS_FORMAT", "cache_teacher_vectors", "load_teacher_vectors"]

VECTORS_FORMAT = "pocketrec-news-vectors/1"


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _write_vectors(path: Path, vectors: np.ndarray, ids: Sequence[str], info: dict) -> Path:
    from safetensors.numpy import save_file

    ids = [str(i) for i in ids]
    if len(ids) != len(vectors):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float32))
    v = np.clip(v, -65504.0, 65504.0).astype(np.float16)
    digest = _digest(ids)
    with atomic_path(path) as tmp:
        save_file({"vectors": v}, str(tmp), metadata={"ids_sha256": digest, "n": str(len(ids))})
    sidecar = {
        "format": VECTORS_FORMAT,
        **info,
        "n": len(ids),
        "dim": int(v.shape[1]) if v.ndim == 2 else 0,
        "dtype": "float16",
        "ids_sha256": digest,
        "ids": ids,
    }
    atomic_write_json(path.with_name(path.name + ".json"), sidecar)
    return path


def cache_teacher_vectors(
    result: Any, impressions: Sequence[Any], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``items.safetensors`` (``vectors`` fp16 ``[n_items, dim]``, catalog order) and
    ``users.safetensors`` (``vectors`` fp16 ``[len(impressions), dim]``), each with a sidecar
    ``<file>.json`` listing the ids (item ids / impression ids), backbone and dims.
    `result`: a `distill.news.teacher_train.NewsTeacherResult`."""
    out = Path(out_dir)
    model = result.model
    info = {
        "backbone": model.cfg.backbone,
        "pooling": model.pooling,
        "hidden_size": model.hidden_size,
        "lora": model.cfg.lora,
        "max_history": model.cfg.max_history,
    }
    items = _write_vectors(
        out / "items.safetensors", result.item_vectors, result.index.ids, {"kind": "items", **info}
    )
    users = _write_vectors(
        out / "users.safetensors",
        result.user_vectors(impressions),
        [imp.impression_id for imp in impressions],
        {"kind": "users", **info},
    )
    return items, users


def load_teacher_vectors(
    path: str | Path, ids: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], dict]:
    """``(vectors float32, ids, sidecar)`` from `cache_teacher_vectors`'s files; with `ids`,
    the rows for exactly those ids, in that order (a missing id raises)."""
    from safetensors import safe_open

    path = Path(path)
    sidecar_path = path.with_name(path.name + ".json")
    if not sidecar_path.is_file():
        raise FileNotFoundError(f"{sidecar_path}: sidecar missing")
    info = json.loads(sidecar_path.read_text(encoding="utf-8"))
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        vectors = f.get_tensor("vectors").astype(np.float32)
    stored = info.get("ids") or []
    if meta.get("ids_sha256") != info.get("ids_sha256") or _digest(stored) != info.get(
        "ids_sha256"
    ):
        raise ValueError(f"{sidecar_path} does not belong to {path} (id digests differ)")
    if len(stored) != len(vectors):
        raise ValueError(f"{path}: {len(vectors)} rows but {len(stored)} ids")
    if ids is None:
        return vectors, stored, info
    row = {k: i for i, k in enumerate(stored)}
    missing = [i for i in ids if i not in row][:3]
    if missing:
        raise KeyError(f"{path}: no vectors for ids {missing}")
    return vectors[[row[i] for i in ids]], [str(i) for i in ids], info
