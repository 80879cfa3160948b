"""What a teacher outputs, live or cached: pooled states and label probabilities.

`run_batches` drives any teacher whose forward takes ``input_ids``/``attention_mask`` and returns
``{"pooled", "logits"}`` (and which has ``max_length``, ``pad_token_id``, ``hidden_size``,
``n_labels``, ``pooling`` and ``cfg.backbone``), e.g. `distill.medication.teacher.TeacherModel`.
`predict_proba` and `pooled_features` answer live (the online-KD path); `extract_features` caches
both outputs on disk for the students, resumably, in shards, and `load_features` reads them back
checked against the sample ids they belong to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.files import atomic_path, atomic_write_text
from distill.backbone import configure_threads, encode_texts, pad_batch

__all__ = [
    "extract_features",
    "extract_shard",
    "load_features",
    "pooled_features",
    "predict_proba",
    "run_batches",
]

log = logging.getLogger(__name__)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------- live


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_batches(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (positions, pooled, probabilities) per batch; texts are grouped by length so
    batches carry little padding."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.pad_token_id
    ids = encode_texts(tokenizer, texts, model.max_length)
    order = np.argsort([len(s) for s in ids], kind="stable")
    device = _device_of(model)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            pos = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch([ids[i] for i in pos], pad_id).items()}
            out = model(**batch)
            yield pos, out["pooled"].float().cpu(), torch.sigmoid(out["logits"].float()).cpu()


def predict_proba(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Teacher probabilities ``[len(texts), n_labels]`` (float32), in input order."""
    configure_threads()
    probs = np.zeros((len(texts), model.n_labels), dtype=np.float32)
    for pos, _, p in run_batches(model, tokenizer, texts, batch_size):
        probs[pos] = p.numpy()
    return probs


def pooled_features(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Pooled hidden states ``[len(texts), hidden]`` (float32), in input order, uncached.

    This is the online-KD path: the student asks the live teacher for each batch's features
    instead of reading them from the cache that `extract_features` writes.
    """
    feats = np.zeros((len(texts), model.hidden_size), dtype=np.float32)
    for pos, pooled, _ in run_batches(model, tokenizer, texts, batch_size):
        feats[pos] = pooled.numpy()
    return feats


def _ids_hash(sample_ids: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(sample_ids)).encode()).hexdigest()


def _check_ids(texts: Sequence[str], sample_ids: Sequence[Any]) -> list[str]:
    ids = [str(s) for s in sample_ids]
    if len(ids) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(ids)} sample ids")
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique (features are looked up by id)")
    if not ids:
        raise ValueError("no texts to extract features from")
    return ids


def _shard_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".shards")


def _prepare_shards(
    model: Any, texts: Sequence[str], ids: list[str], out_path: Path, shard_size: int
) -> Path:
    """Create (or validate) the shard folder; stale shards from other inputs are wiped."""
    if not _is_int(shard_size) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    manifest = {
        "n": len(ids),
        "shard_size": shard_size,
        "ids_sha256": _ids_hash(ids),
        "texts_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
        "backbone": model.cfg.backbone,
        "n_labels": model.n_labels,
        "dim": model.hidden_size,
    }
    shards = _shard_dir(out_path)
    mpath = shards / "manifest.json"
    if shards.is_dir():
        try:
            same = json.loads(mpath.read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if not same:
            log.warning("%s: shards are from other inputs; starting over", shards)
            shutil.rmtree(shards)
    if not shards.is_dir():
        shards.mkdir(parents=True)
        atomic_write_text(mpath, json.dumps(manifest, indent=2))
    return shards


def _shard_path(shards: Path, index: int) -> Path:
    return shards / f"shard_{index:06d}.safetensors"


def extract_shard(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    sample_ids: Sequence[Any],
    out_path: str | Path,
    shard_index: int,
    batch_size: int = 32,
    shard_size: int = 256,
    progress: Any = None,
) -> Path:
    """Compute one shard (samples ``[i*shard_size, (i+1)*shard_size)``) unless it is
    already on disk; shards are renamed into place only when complete, so a killed run
    never leaves a half shard behind."""
    from safetensors.torch import save_file

    out_path = Path(out_path)
    ids = _check_ids(texts, sample_ids)
    texts = list(texts)
    shards = _prepare_shards(model, texts, ids, out_path, shard_size)
    n_shards = math.ceil(len(ids) / shard_size)
    if not _is_int(shard_index) or not 0 <= shard_index < n_shards:
        raise ValueError(f"shard_index must be in [0, {n_shards}), got {shard_index!r}")
    path = _shard_path(shards, shard_index)
    lo, hi = shard_index * shard_size, min(len(ids), (shard_index + 1) * shard_size)
    if path.is_file():
        return path
    feats = torch.zeros((hi - lo, model.hidden_size), dtype=torch.float32)
    probs = torch.zeros((hi - lo, model.n_labels), dtype=torch.float32)
    for pos, pooled, p in run_batches(model, tokenizer, texts[lo:hi], batch_size):
        idx = torch.as_tensor(pos)
        feats[idx] = pooled
        probs[idx] = p
        if progress is not None:
            progress.update(len(pos))
    big = feats.abs().max().item()
    if not math.isfinite(big) or big > torch.finfo(torch.float16).max:
        log.warning("pooled states exceed the float16 range (max |x| = %g); clipping", big)
        feats = feats.nan_to_num().clamp(-65504.0, 65504.0)
    with atomic_path(path) as tmp:
        save_file({"features": feats.half(), "probs": probs.half()}, str(tmp))
    return path


def extract_features(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    sample_ids: Sequence[Any],
    out_path: str | Path,
    batch_size: int = 32,
    meta: dict[str, Any] | None = None,
    shard_size: int = 256,
) -> Path:
    """Cache the teacher's pooled states (``features`` fp16 ``[N, hidden]``) and
    probabilities (``probs`` fp16 ``[N, n_labels]``) in one safetensors file, plus a
    sidecar ``<out>.json`` naming the samples.

    Resumable: work is done in shards of ``shard_size`` samples under ``<out>.shards/``;
    a restart skips the complete ones. The final file is written under a temporary name
    and renamed, then the shards are removed.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    configure_threads()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ids = _check_ids(texts, sample_ids)
    texts = list(texts)
    digest = _ids_hash(ids)
    sidecar = out_path.with_name(out_path.name + ".json")
    shards = _shard_dir(out_path)
    if out_path.is_file() and sidecar.is_file() and not shards.exists():
        with safe_open(str(out_path), framework="pt") as f:
            done = (f.metadata() or {}).get("ids_sha256") == digest
        if done and json.loads(sidecar.read_text()).get("ids_sha256") == digest:
            log.info("%s already holds features for these samples", out_path)
            return out_path

    _prepare_shards(model, texts, ids, out_path, shard_size)
    n_shards = math.ceil(len(ids) / shard_size)
    done = [i for i in range(n_shards) if _shard_path(shards, i).is_file()]
    initial = sum(min(shard_size, len(ids) - i * shard_size) for i in done)
    with tqdm(total=len(ids), initial=initial, unit="sample", desc="teacher features") as bar:
        for i in range(n_shards):
            extract_shard(
                model, tokenizer, texts, ids, out_path, i, batch_size, shard_size, progress=bar
            )

    parts = [load_file(str(_shard_path(shards, i))) for i in range(n_shards)]
    features = torch.cat([p["features"] for p in parts])
    probs = torch.cat([p["probs"] for p in parts])
    with atomic_path(out_path) as tmp:
        save_file(
            {"features": features, "probs": probs},
            str(tmp),
            metadata={"ids_sha256": digest, "n": str(len(ids))},
        )
    meta = dict(meta or {})
    info = {
        "backbone": model.cfg.backbone,
        "dim": int(features.shape[1]),
        "n": len(ids),
        "n_labels": int(probs.shape[1]),
        "pooling": model.pooling,
        "sample_ids": ids,
        "ids_sha256": digest,
        "prompt_hash": meta.pop("prompt_hash", None),
        "dtype": "float16",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "meta": meta,
    }
    atomic_write_text(sidecar, json.dumps(info, indent=1) + "\n")
    shutil.rmtree(shards)
    return out_path


def load_features(
    path: str | Path, sample_ids: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read cached teacher outputs as float32 ``(features, probs, sidecar)``.

    The sidecar must belong to the file (same id digest), and when ``sample_ids`` is given
    it must list exactly those ids in that order, so features can never be silently
    matched to the wrong visits.
    """
    from safetensors import safe_open

    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar}: sidecar missing; re-run extract_features")
    info = json.loads(sidecar.read_text())
    with safe_open(str(path), framework="np") as f:
        file_meta = f.metadata() or {}
        features = f.get_tensor("features").astype(np.float32)
        probs = f.get_tensor("probs").astype(np.float32)
    ids = info.get("sample_ids") or []
    if file_meta.get("ids_sha256") != info.get("ids_sha256") or _ids_hash(ids) != info.get(
        "ids_sha256"
    ):
        raise ValueError(f"{sidecar} does not belong to {path} (sample id digests differ)")
    if not (len(ids) == features.shape[0] == probs.shape[0] == info.get("n")):
        raise ValueError(
            f"{path}: {features.shape[0]} rows but the sidecar lists {len(ids)} sample ids"
        )
    if sample_ids is not None:
        want = [str(s) for s in sample_ids]
        if want != ids:
            if len(want) != len(ids):
                raise ValueError(f"{path}: holds {len(ids)} samples, {len(want)} were asked for")
            first = next(i for i, (a, b) in enumerate(zip(want, ids, strict=True)) if a != b)
            raise ValueError(
                f"{path}: sample ids differ from the requested ones first at position {first} "
                f"({ids[first]!r} cached, {want[first]!r} requested)"
            )
    return features, probs, info
