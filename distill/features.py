"""What a teacher outputs, live or cached: pooled states and label probabilities.

`run_batches` drives any teacher whose forward takes ``input_ids``/``attention_mask`` and returns
``{"pooled", "logits"}`` (and which has ``max_length``, ``pad_token_id``, ``hidden_size``,
``n_labels``, ``pooling`` and ``cfg.backbone``), e.g. `distill.medication.teacher.TeacherModel`,
or `FrozenEncoder` (no head, ``n_labels == 0``: label-free features, extracted once for all folds).
`predict_proba` and `pooled_features` answer live (the online-KD path); `extract_features` caches
both outputs on disk for the students, resumably, in shards, and `load_features` reads them back
checked against the sample ids they belong to.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) every rank
computes the shards ``rank, rank + world, ...`` and rank 0 merges them, so the same call spreads
over processes or GPUs with no code change; ``python -m distill.features`` does it for a JSONL of
prompts, e.g. ``torchrun --nproc_per_node 8 -m distill.features --backbone DIR --prompts
run/prompts.jsonl --out run/features.safetensors``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.files import atomic_path, atomic_write_text
from distill.backbone import (
    TeacherConfig,
    configure_threads,
    encode_texts,
    is_decoder_config,
    load_backbone,
    load_backbone_tokenizer,
    pad_batch,
    pool_hidden,
    resolve_backbone,
)

__all__ = [
    "FrozenEncoder",
    "barrier",
    "distributed",
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


# --------------------------------------------------------------------------- processes


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` from the launcher's environment (``torchrun``, ``accelerate
    launch``: ``RANK``/``WORLD_SIZE``); with more than one process the default process group
    is joined (NCCL on GPUs, gloo otherwise) unless the Trainer already did."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import datetime as dt

        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # long timeout: ranks wait for each other's shards, which can take hours on a
            # full export with a large teacher
            dist.init_process_group("nccl" if cuda else "gloo", timeout=dt.timedelta(hours=6))
    return rank, world


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------- frozen


class FrozenEncoder(nn.Module):
    """A pretrained backbone used as it is: pooled states only, no head, no training.

    Its features do not depend on any label, so they can be extracted once for all folds
    (`extract_features` stores no probabilities for it: ``n_labels == 0``); the teacher's
    scores, when wanted, come from a head fit per fold on the training patients
    (`distill.medication.teacher.fit_frozen_head`).
    """

    n_labels = 0

    def __init__(self, backbone: nn.Module, tokenizer: Any, cfg: TeacherConfig):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        config = backbone.config
        self.is_decoder = is_decoder_config(config)
        if cfg.pooling == "auto":
            self.pooling = "last" if self.is_decoder else "mean"
        else:
            self.pooling = cfg.pooling
        self.hidden_size = int(config.hidden_size)
        limit = getattr(config, "max_position_embeddings", None)
        self.max_length = min(cfg.max_length, limit) if isinstance(limit, int) else cfg.max_length
        self.pad_token_id = int(tokenizer.pad_token_id)

    @classmethod
    def from_config(cls, cfg: TeacherConfig, device: str | torch.device | None = None):
        """Load ``cfg.backbone`` (on this rank's GPU when there is one, else the CPU)."""
        source = resolve_backbone(cfg.backbone)
        tokenizer = load_backbone_tokenizer(source, cfg.truncation_side)
        model = cls(load_backbone(source), tokenizer, cfg)
        if device is None and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return model.to(device) if device is not None else model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        kwargs = {"use_cache": False} if hasattr(self.backbone.config, "use_cache") else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return {"pooled": pool_hidden(out.last_hidden_state, attention_mask, self.pooling)}


# --------------------------------------------------------------------------- live


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def run_batches(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (positions, pooled, probabilities) per batch; texts are grouped by length so
    batches carry little padding. A model without a head (``n_labels == 0``) yields
    probabilities of width 0."""
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
            pooled = out["pooled"].float().cpu()
            if "logits" in out:
                probs = torch.sigmoid(out["logits"].float()).cpu()
            else:
                probs = torch.zeros((len(pos), 0), dtype=torch.float32)
            yield pos, pooled, probs


def predict_proba(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Teacher probabilities ``[len(texts), n_labels]`` (float32), in input order."""
    configure_threads()
    if model.n_labels < 1:
        raise ValueError("this teacher has no head (frozen features): fit one to get scores")
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
    tensors = {"features": feats.half()}
    if model.n_labels > 0:
        tensors["probs"] = probs.half()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
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
    probabilities (``probs`` fp16 ``[N, n_labels]``; none for a headless `FrozenEncoder`) in
    one safetensors file, plus a sidecar ``<out>.json`` naming the samples.

    Resumable: work is done in shards of ``shard_size`` samples under ``<out>.shards/``;
    a restart skips the complete ones. The final file is written under a temporary name
    and renamed, then the shards are removed.

    Under ``torchrun`` / ``accelerate launch`` every rank must call this with the same
    inputs: rank r computes shards r, r + world, ...; rank 0 merges; all ranks return once
    the file is complete.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    configure_threads()
    rank, world = distributed()
    out_path = Path(out_path)
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

    if rank == 0:  # one process creates (or wipes) the shard folder; the others wait
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _prepare_shards(model, texts, ids, out_path, shard_size)
    barrier()
    n_shards = math.ceil(len(ids) / shard_size)
    mine = list(range(rank, n_shards, world))

    def size(i: int) -> int:
        return min(shard_size, len(ids) - i * shard_size)

    done_size = sum(size(i) for i in mine if _shard_path(shards, i).is_file())
    desc = "teacher features" if world == 1 else f"teacher features (rank 0 of {world})"
    with tqdm(
        total=sum(size(i) for i in mine),
        initial=done_size,
        unit="prompt",
        desc=desc,
        disable=rank != 0,
        mininterval=2.0,
    ) as bar:
        for i in mine:
            extract_shard(
                model, tokenizer, texts, ids, out_path, i, batch_size, shard_size, progress=bar
            )
    barrier()
    if rank == 0:
        parts = [load_file(str(_shard_path(shards, i))) for i in range(n_shards)]
        tensors = {"features": torch.cat([p["features"] for p in parts])}
        if model.n_labels > 0:
            tensors["probs"] = torch.cat([p["probs"] for p in parts])
        with atomic_path(out_path) as tmp:
            save_file(tensors, str(tmp), metadata={"ids_sha256": digest, "n": str(len(ids))})
        meta = dict(meta or {})
        info = {
            "backbone": model.cfg.backbone,
            "dim": int(tensors["features"].shape[1]),
            "n": len(ids),
            "n_labels": int(model.n_labels),
            "pooling": model.pooling,
            "frozen": model.n_labels == 0,
            "sample_ids": ids,
            "ids_sha256": digest,
            "prompt_hash": meta.pop("prompt_hash", None),
            "dtype": "float16",
            "world_size": world,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "meta": meta,
        }
        atomic_write_text(sidecar, json.dumps(info, indent=1) + "\n")
        shutil.rmtree(shards)
    barrier()
    return out_path


def load_features(
    path: str | Path, sample_ids: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read cached teacher outputs as float32 ``(features, probs, sidecar)``; ``probs`` has
    width 0 for frozen features (no head).

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
        if "probs" in f.keys():
            probs = f.get_tensor("probs").astype(np.float32)
        else:
            probs = np.zeros((features.shape[0], 0), dtype=np.float32)
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


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.features`` / ``torchrun --nproc_per_node N -m distill.features``:
    frozen (label-free) features of a JSONL of ``{"id", "text"}`` prompts (a run's
    prompts.jsonl), sharded over the launcher's processes."""
    d = TeacherConfig()
    p = argparse.ArgumentParser(prog="python -m distill.features", description=main.__doc__)
    p.add_argument("--backbone", required=True, help="minilm, smollm2 or a local model folder")
    p.add_argument("--prompts", required=True, help="JSONL with id and text per line")
    p.add_argument("--out", required=True, help="features file to write (.safetensors)")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--pooling", default=d.pooling, choices=["auto", "mean", "last"])
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward, per process")
    p.add_argument("--shard-size", type=int, default=256, help="prompts per resumable shard")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ids, texts = [], []
    try:
        cfg = TeacherConfig(
            backbone=a.backbone, pooling=a.pooling, max_length=a.max_length, frozen=True
        )
        with open(a.prompts, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                        ids.append(str(rec["id"]))
                        texts.append(str(rec["text"]))
                    except (ValueError, KeyError, TypeError) as e:
                        raise ValueError(f"{a.prompts}:{lineno}: need {{id, text}}: {e}") from e
    except (ValueError, OSError) as e:
        print(f"distill.features: error: {e}", file=sys.stderr)
        return 2
    rank, world = distributed()
    model = FrozenEncoder.from_config(cfg)
    path = extract_features(
        model,
        model.tokenizer,
        texts,
        ids,
        a.out,
        a.batch_size,
        shard_size=a.shard_size,
        meta={"prompts": str(a.prompts)},
    )
    if rank == 0:
        print(f"distill.features: wrote {path} ({len(ids)} prompts, {world} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
