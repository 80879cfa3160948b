"""LEADER teacher: a pretrained language model with a multi-label drug head.

The teacher reads a patient's visit history rendered as text, pools one hidden state per
prompt and scores every drug with a bias-free linear head. It is fine-tuned (LoRA by
default, full fine-tuning on request) with the Hugging Face ``Trainer`` so that
``torchrun --nproc_per_node N -m distill.medication.teacher ...`` spreads training over
processes without any code change. Afterwards `distill.features.extract_features` caches the
pooled states and the teacher's probabilities on disk, which is all the student needs for
distillation. The backbone itself (loading, pooling, tokenizing) is `distill.backbone`'s.

Frozen mode (``TeacherConfig(frozen=True)``): no fine-tuning at all. The backbone's pooled
states (`distill.features.FrozenEncoder`) are label-free, so they are extracted once for all
folds, and the teacher's scores come from `distill.medication.run.linear_probe`: a logistic
head per fold, fit on the training patients, its L2 weight chosen on the validation patients.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from distill.backbone import (
    TeacherConfig,
    configure_threads,
    encode_texts,
    is_decoder_config,
    load_backbone,
    load_backbone_tokenizer,
    pool_hidden,
    quiet_transformers,
    read_saved_info,
    resolve_backbone,
    wrap_lora,
)
from distill.medication.teacher_trainer import (
    EncodedPrompts,
    PadCollator,
    compute_metrics,
    logits_only,
    make_trainer_class,
    replace_progress,
)

__all__ = [
    "TeacherModel",
    "load_teacher",
    "main",
    "save_teacher",
    "train_teacher",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "teacher_config.json"
HEAD_FILE = "head.safetensors"
SUMMARY_FILE = "train_summary.json"
FORMAT = "pocketrec-teacher/1"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- model


class TeacherModel(nn.Module):
    """Backbone + pooling + bias-free linear head over the drug vocabulary.

    The head has no bias so a drug's score is purely a direction in the pooled space, which
    is what the student later imitates. ``forward`` returns a dict (loss first when labels
    are given) so the Hugging Face ``Trainer`` can drive it directly.
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, cfg: TeacherConfig, n_labels: int):
        super().__init__()
        if not _is_int(n_labels) or n_labels < 1:
            raise ValueError(f"n_labels must be an integer >= 1, got {n_labels!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.n_labels = n_labels
        config = self.backbone_config
        self.is_decoder = is_decoder_config(config)
        if cfg.pooling == "auto":
            self.pooling = "last" if self.is_decoder else "mean"
        else:
            self.pooling = cfg.pooling
        self.hidden_size = int(config.hidden_size)
        limit = getattr(config, "max_position_embeddings", None)
        self.max_length = min(cfg.max_length, limit) if isinstance(limit, int) else cfg.max_length
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.head = nn.Linear(self.hidden_size, n_labels, bias=False)
        std = float(getattr(config, "initializer_range", 0.02) or 0.02)
        nn.init.normal_(self.head.weight, std=std)

    @classmethod
    def from_config(cls, cfg: TeacherConfig, n_labels: int) -> TeacherModel:
        """Fresh teacher: pretrained backbone (LoRA-wrapped if ``cfg.lora``), new head."""
        source = resolve_backbone(cfg.backbone)
        tokenizer = load_backbone_tokenizer(source, cfg.truncation_side)
        backbone = load_backbone(source)
        if cfg.lora:
            backbone = wrap_lora(backbone, cfg)
        return cls(backbone, tokenizer, cfg, n_labels)

    @property
    def backbone_config(self) -> Any:
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        kwargs = {}
        if hasattr(self.backbone_config, "use_cache"):
            kwargs["use_cache"] = False  # no generation here; a KV cache only costs memory
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = pool_hidden(out.last_hidden_state, attention_mask, self.pooling)
        logits = self.head(pooled)
        result: dict[str, torch.Tensor] = {}
        if labels is not None:
            result["loss"] = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        result["logits"] = logits
        result["pooled"] = pooled
        return result


def save_teacher(model: TeacherModel, out_dir: str | Path) -> Path:
    """Write head, LoRA adapter (or full backbone), tokenizer and config to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = {"weight": model.head.weight.detach().to("cpu", torch.float32).contiguous()}
    save_file(head, str(out / HEAD_FILE))
    if model.cfg.lora:
        model.backbone.save_pretrained(str(out / "adapter"))
    else:
        model.backbone.save_pretrained(str(out / "backbone"))
    model.tokenizer.save_pretrained(str(out / "tokenizer"))
    info = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "n_labels": model.n_labels,
        "pooling": model.pooling,
        "hidden_size": model.hidden_size,
    }
    (out / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def load_teacher(out_dir: str | Path) -> TeacherModel:
    """Rebuild a teacher written by :func:`save_teacher` (eval mode, on the CPU)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    info = read_saved_info(out, CONFIG_FILE, FORMAT, "teacher")
    cfg = TeacherConfig.from_dict(info["config"])
    tokenizer = load_backbone_tokenizer(str(out / "tokenizer"), cfg.truncation_side)
    if cfg.lora:
        from peft import PeftModel

        base = load_backbone(resolve_backbone(cfg.backbone))
        backbone = PeftModel.from_pretrained(base, str(out / "adapter"), is_trainable=False)
    else:
        with quiet_transformers():  # the saved backbone has no pooler; that is intended
            backbone = load_backbone(str(out / "backbone"))
    model = TeacherModel(backbone, tokenizer, cfg, int(info["n_labels"]))
    if model.pooling != info["pooling"]:
        raise ValueError(
            f"{out / CONFIG_FILE}: pooling {info['pooling']!r} != rebuilt {model.pooling!r}"
        )
    head = load_file(str(out / HEAD_FILE))
    model.head.load_state_dict(head)
    return model.eval()


# --------------------------------------------------------------------------- training


def _check_split(name: str, texts: Sequence[str], y: Any, n_labels: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 2 or arr.shape != (len(texts), n_labels):
        raise ValueError(
            f"{name}: labels must have shape [len(texts), n_labels] = "
            f"[{len(texts)}, {n_labels}], got {arr.shape}"
        )
    if len(texts) == 0:
        raise ValueError(f"{name}: no samples")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: labels must be 0/1")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: texts must be strings")
    return arr.astype(np.float32)


def train_teacher(
    texts_train: Sequence[str],
    y_train: Any,
    texts_val: Sequence[str],
    y_val: Any,
    cfg: TeacherConfig,
    out_dir: str | Path,
    n_labels: int,
    progress_name: str = "teacher",
) -> TeacherModel:
    """Fine-tune a teacher, keep the epoch with the best validation PR-AUC, save it.

    Runs under plain ``python`` or ``torchrun`` alike (the ``Trainer`` handles DDP). Only
    rank 0 writes ``out_dir``: the teacher (see :func:`save_teacher`) and
    ``train_summary.json`` (world size, best PR-AUC, log history). Every rank returns the
    trained model. Progress: named bars and one line per epoch (``progress_name``, e.g.
    "teacher fold 2"), not the Trainer's raw log dicts.
    """
    from transformers import TrainingArguments, set_seed

    y_tr = _check_split("train", texts_train, y_train, n_labels)
    y_va = _check_split("val", texts_val, y_val, n_labels)
    configure_threads()
    out = Path(out_dir)
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=float(cfg.epochs),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        seed=cfg.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="prauc",
        greater_is_better=True,
        logging_strategy="epoch",
        report_to=[],
        use_cpu=not cuda,
        ddp_backend=None if cuda or world == 1 else "gloo",
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    set_seed(cfg.seed)
    model = TeacherModel.from_config(cfg, n_labels)
    tok = model.tokenizer
    train_ds = EncodedPrompts(encode_texts(tok, texts_train, model.max_length), y_tr)
    val_ds = EncodedPrompts(encode_texts(tok, texts_val, model.max_length), y_va)
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=PadCollator(model.pad_token_id),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=logits_only,
        head_lr_multiplier=cfg.head_lr_multiplier,
    )
    replace_progress(trainer, progress_name)
    if trainer.is_world_process_zero():
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info(
            "teacher: world size %d, %d trainable parameters, pooling %s",
            args.world_size,
            n_train,
            model.pooling,
        )
    trainer.train()
    model.eval()
    if trainer.is_world_process_zero():
        save_teacher(model, out)
        summary = {
            "world_size": args.world_size,
            "best_metric": trainer.state.best_metric,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "epochs": cfg.epochs,
            "n_train": len(texts_train),
            "n_val": len(texts_val),
            "log_history": trainer.state.log_history,
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return model


# --------------------------------------------------------------------------- CLI


def _read_jsonl(path: str, n_labels: int) -> tuple[list[str], list[str], np.ndarray]:
    ids, texts, rows = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                labels = [int(x) for x in rec["labels"]]
                ids.append(str(rec["id"]))
                texts.append(str(rec["text"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: need {{id, text, labels}}: {e}") from e
            bad = [x for x in labels if not 0 <= x < n_labels]
            if bad:
                raise ValueError(f"{path}:{lineno}: labels {bad} outside [0, {n_labels})")
            row = np.zeros(n_labels, dtype=np.float32)
            row[labels] = 1.0
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no records")
    return ids, texts, np.stack(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.medication.teacher`` / ``torchrun ... -m distill.medication.teacher``:
    train a teacher on JSONL files of ``{"id", "text", "labels": [label indices]}``."""
    d = TeacherConfig()
    p = argparse.ArgumentParser(
        prog="python -m distill.medication.teacher", description=main.__doc__
    )
    p.add_argument("--train", required=True, help="training JSONL")
    p.add_argument("--val", required=True, help="validation JSONL")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-labels", type=int, required=True, help="size of the label set")
    p.add_argument("--backbone", default=d.backbone, help="'minilm' or a local model directory")
    p.add_argument("--pooling", default=d.pooling, choices=["auto", "mean", "last"])
    p.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--lora-targets", nargs="+", default=None, help="module names to adapt")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--head-lr-multiplier", type=float, default=d.head_lr_multiplier)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"distill.medication.teacher: rank {rank} of world size {world}", flush=True)
    try:
        cfg = TeacherConfig(
            backbone=a.backbone,
            pooling=a.pooling,
            lora=not a.no_lora,
            lora_r=a.lora_r,
            lora_alpha=a.lora_alpha,
            lora_dropout=a.lora_dropout,
            lora_targets=tuple(a.lora_targets) if a.lora_targets else None,
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            max_length=a.max_length,
            weight_decay=a.weight_decay,
            head_lr_multiplier=a.head_lr_multiplier,
            seed=a.seed,
        )
        _, tr_texts, tr_y = _read_jsonl(a.train, a.n_labels)
        _, va_texts, va_y = _read_jsonl(a.val, a.n_labels)
    except (ValueError, OSError) as e:
        print(f"distill.medication.teacher: error: {e}", file=sys.stderr)
        return 2
    train_teacher(tr_texts, tr_y, va_texts, va_y, cfg, a.out, a.n_labels)
    if rank == 0:
        print(f"distill.medication.teacher: wrote {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
