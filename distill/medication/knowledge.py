"""What a decoder LLM knows about each code's drugs, zero-shot: one score per (code, drug class).

One hundred patients cannot show that ketoacidosis calls for insulin or Parkinson's disease for
dopaminergic agents; a language model has read it. For each diagnosis or procedure code the
LLM reads a short prompt built from the code's title,

    A patient is diagnosed with: Diabetes with ketoacidosis, type I.
    The drug class prescribed for it is:

and every drug class's name is scored as its continuation (mean token log-likelihood). The same
names are scored after the same prompt about "an unspecified condition"; the difference (a
pointwise mutual information, in nats per token) is the code's score for that class: what the
code adds to the class's likelihood beyond the prompt itself. Label-free (titles and class names
only), so it is computed once for all folds and may be cached and shipped.

Cost: the prompt is read once and its key/value cache reused for all class names, batched by
length, so a code costs about one short forward per class name token; in bfloat16 on a CPU with
AMX (or on a GPU) about half a second per code for SmolLM2-135M and 138 classes. Under
``torchrun`` / ``accelerate launch`` each rank scores every ``world``-th code and rank 0 merges,
as `distill.features` does for the teacher's features.

`KnowledgeCache` keeps the scores per code in one ``.npz`` keyed by the scorer's identity (model,
templates, class names), so later runs only score codes they have not seen; a cache computed over
the shipped ICD dictionaries' categories travels in `assets/knowledge/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "KnowledgeCache",
    "LLMScorer",
    "class_phrases",
    "code_prompt",
    "code_knowledge",
    "scorer_identity",
]

# the continuation after each prompt is " <class name>"
TEMPLATES = {
    "diagnoses": "A patient is diagnosed with: {title}.\nThe drug class prescribed for it is:",
    "procedures": "A patient undergoes: {title}.\nThe drug class given with it is:",
}
NULL_TITLES = {"diagnoses": "an unspecified condition", "procedures": "an unspecified procedure"}
KINDS = tuple(TEMPLATES)
SAVE_EVERY = 200  # codes between cache saves in a single process


def class_phrases(labels: Sequence[str], names: Mapping[str, str] | None = None) -> list[str]:
    """The text scored for each ATC3 class: its WHO name in lower case ("high-ceiling
    diuretics"), or the code itself when the name is unknown."""
    if names is None:
        from distill.data.codes import atc_names

        names = atc_names()
    return [str(names.get(code, code)).strip().lower() for code in labels]


def code_prompt(kind: str, title: str) -> str:
    if kind not in TEMPLATES:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    title = " ".join(str(title).split()).rstrip(".")
    return TEMPLATES[kind].format(title=title)


def scorer_identity(backbone: str, phrases: Sequence[str]) -> str:
    """A digest of what the scores depend on: the model, the templates, the class names."""
    what = {"backbone": backbone, "templates": TEMPLATES, "null": NULL_TITLES}
    blob = json.dumps({**what, "phrases": list(phrases)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class LLMScorer:
    """A causal LM that scores a fixed list of continuations after any prompt.

    `score(prompts)` -> [len(prompts), len(phrases)]: each phrase's mean token log-probability
    as the continuation of each prompt. bfloat16 where the hardware runs it fast (a GPU, or a
    CPU with AMX), else float32; the scores are returned as float32.
    """

    def __init__(self, source: str, phrases: Sequence[str], dtype: str = "auto",
                 batch_size: int = 64) -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM

        from distill.backbone import _from_pretrained, load_backbone_tokenizer

        if not phrases:
            raise ValueError("no class names to score")
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = _pick_dtype(dtype, self.device)
        self.tokenizer = load_backbone_tokenizer(source)
        model = _from_pretrained(AutoModelForCausalLM, source, dtype=self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = int(batch_size)
        conts = [self.tokenizer(" " + p, add_special_tokens=False)["input_ids"] for p in phrases]
        if any(not c for c in conts):
            raise ValueError("a class name tokenizes to nothing")
        self.continuations = conts
        # batches of similar length: little padding in the continuation forwards
        order = sorted(range(len(conts)), key=lambda i: (len(conts[i]), i))
        self.batches = [order[i : i + self.batch_size] for i in range(0, len(order), batch_size)]

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(prompts), len(self.continuations)), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            out[row] = self._score_one(prompt)
        return out

    def _score_one(self, prompt: str) -> np.ndarray:
        import copy

        torch = self.torch
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
        n_prompt = ids.shape[1]
        scores = np.zeros(len(self.continuations), dtype=np.float64)
        with torch.inference_mode():
            first = self.model(input_ids=ids, use_cache=True)
            next_logp = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
            for batch in self.batches:
                conts = [self.continuations[i] for i in batch]
                width = max(len(c) for c in conts)
                inp = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), n_prompt + width), dtype=torch.long)
                mask[:, :n_prompt] = 1
                for r, c in enumerate(conts):
                    inp[r, : len(c)] = torch.as_tensor(c)
                    mask[r, n_prompt : n_prompt + len(c)] = 1
                cache = copy.deepcopy(first.past_key_values)
                cache.batch_repeat_interleave(len(batch))
                logits = self.model(
                    input_ids=inp.to(self.device),
                    attention_mask=mask.to(self.device),
                    past_key_values=cache,
                    use_cache=False,
                ).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for r, (i, c) in enumerate(zip(batch, conts, strict=True)):
                    total = next_logp[c[0]]
                    if len(c) > 1:
                        tail = torch.as_tensor(c[1:], device=logp.device)
                        total = total + logp[r, torch.arange(len(c) - 1), tail].sum()
                    scores[i] = float(total) / len(c)
        return scores.astype(np.float32)


def _pick_dtype(dtype: str, device: Any) -> Any:
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype != "auto":
        raise ValueError(f"dtype must be auto, float32 or bfloat16; got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_amx() else torch.float32


def _cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


class KnowledgeCache:
    """Per-code scores of one scorer identity, in one ``.npz`` (codes, kinds, float16 table)
    with a JSON sidecar; codes are added, never silently replaced by another scorer's."""

    def __init__(self, path: str | Path, identity: str, phrases: Sequence[str]) -> None:
        self.path = Path(path)
        self.identity = identity
        self.phrases = list(phrases)
        self.rows: dict[tuple[str, str], np.ndarray] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        sidecar = self.path.with_suffix(".json")
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if info.get("identity") != self.identity:
            log.info("%s holds another scorer's knowledge; starting a new table", self.path)
            return
        with np.load(self.path, allow_pickle=False) as z:
            codes, kinds, table = z["codes"], z["kinds"], z["table"]
        if table.shape[1:] != (len(self.phrases),) or len(codes) != len(table):
            raise ValueError(f"{self.path}: table {table.shape} does not fit {len(codes)} codes "
                             f"x {len(self.phrases)} classes")  # fmt: skip
        for k, c, row in zip(kinds, codes, table, strict=True):
            self.rows[(str(k), str(c))] = row.astype(np.float32)

    def missing(self, keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [k for k in dict.fromkeys(keys) if k not in self.rows]

    def get(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.stack([self.rows[k] for k in keys]) if keys else np.zeros((0, len(self.phrases)))

    def add(self, keys: Sequence[tuple[str, str]], table: np.ndarray) -> None:
        for k, row in zip(keys, table, strict=True):
            # at the precision the file keeps, so a fresh answer equals a cached one
            self.rows[k] = np.asarray(row, np.float16).astype(np.float32)

    def save(self, meta: Mapping[str, Any] | None = None) -> Path:
        keys = sorted(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    kinds=np.array([k for k, _ in keys]),
                    codes=np.array([c for _, c in keys]),
                    table=self.get(keys).astype(np.float16),
                )
        info = {"identity": self.identity, "classes": len(self.phrases), "codes": len(keys),
                "phrases": self.phrases, "templates": TEMPLATES, "null": NULL_TITLES,
                **dict(meta or {})}  # fmt: skip
        atomic_write_text(self.path.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
        return self.path


def code_knowledge(
    keys: Sequence[tuple[str, str]],
    titles: Mapping[str, str],
    labels: Sequence[str],
    backbone: str,
    cache_path: str | Path,
    progress: bool = True,
    names: Mapping[str, str] | None = None,
) -> np.ndarray:
    """[len(keys), len(labels)] zero-shot PMI scores for (kind, code) pairs, kinds
    "diagnoses"/"procedures". Codes already in the cache at `cache_path` are not scored again;
    the rest are scored (spread over ranks under torchrun) and added to the cache. A code
    without a title is scored by its code string; `names` (ATC3 -> name) defaults to the WHO
    names."""
    from tqdm.auto import tqdm

    from distill.backbone import configure_threads, resolve_backbone
    from distill.features import barrier, distributed

    phrases = class_phrases(labels, names)
    identity = scorer_identity(backbone, phrases)
    cache = KnowledgeCache(cache_path, identity, phrases)
    todo = cache.missing(keys)
    if todo:
        configure_threads()
        rank, world = distributed()
        scorer = LLMScorer(resolve_backbone(backbone), phrases)
        mine = todo[rank::world]
        null = {k: scorer.score([code_prompt(k, NULL_TITLES[k])])[0] for k in KINDS}
        t0 = time.perf_counter()
        part = np.zeros((len(mine), len(phrases)), dtype=np.float32)
        desc = "LLM knowledge" if world == 1 else f"LLM knowledge (rank 0 of {world})"
        bar = tqdm(total=len(mine), unit="code", desc=desc, disable=not progress or rank != 0,
                   mininterval=2.0)  # fmt: skip
        for i, (kind, code) in enumerate(mine):
            prompt = code_prompt(kind, titles.get(code) or code.split(":", 1)[-1])
            part[i] = scorer.score([prompt])[0] - null[kind]
            bar.update(1)
            if world == 1 and (i + 1) % SAVE_EVERY == 0:  # a killed run keeps what it scored
                cache.add(mine[i + 1 - SAVE_EVERY : i + 1], part[i + 1 - SAVE_EVERY : i + 1])
                cache.save({"backbone": backbone})
        bar.close()
        if world > 1:
            shard = Path(f"{cache_path}.rank{rank}.npy")
            with atomic_path(shard) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, part)
            barrier()
            if rank == 0:
                for r in range(world):
                    path = Path(f"{cache_path}.rank{r}.npy")
                    cache.add(todo[r::world], np.load(path))
                    path.unlink()
        else:
            cache.add(mine, part)
        if rank == 0:
            cache.save({"backbone": backbone, "seconds_last_update": round(
                time.perf_counter() - t0, 1)})  # fmt: skip
        barrier()
        if rank != 0:
            cache = KnowledgeCache(cache_path, identity, phrases)
        log.info("LLM knowledge: scored %d codes in %.0f s", len(todo), time.perf_counter() - t0)
    return cache.get(list(keys))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distill.medication.knowledge`` / ``torchrun --nproc_per_node N -m
    distill.medication.knowledge``: score a list of codes (one ``kind<TAB>code[<TAB>title]`` per
    line; kind "diagnoses" or "procedures"; titles default to the shipped ICD dictionaries)
    against the drug classes of a run's labels.json, into the cache ``--out``, spread over the
    launcher's processes (e.g. every category of a full ICD dictionary on 8 GPUs)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m distill.medication.knowledge",
                                description=main.__doc__)  # fmt: skip
    p.add_argument("--backbone", required=True, help="smollm2 or a local causal LM folder")
    p.add_argument("--codes", required=True, help="TSV: kind, code[, title] per line")
    p.add_argument("--labels", required=True, help="JSON list of ATC3 codes (a run's labels.json)")
    p.add_argument("--out", required=True, help="the knowledge cache (.npz) to fill")
    p.add_argument("--names", help="JSON object ATC3 -> class name (default: the WHO names)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keys, titles = [], {}
    try:
        labels = json.loads(Path(a.labels).read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{a.labels}: expected a JSON list of ATC3 codes")
        names = json.loads(Path(a.names).read_text(encoding="utf-8")) if a.names else None
        with open(a.codes, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or parts[0] not in KINDS or not parts[1]:
                    raise ValueError(f"{a.codes}:{lineno}: need kind (diagnoses or procedures), "
                                     "a tab and a code")  # fmt: skip
                keys.append((parts[0], parts[1]))
                if len(parts) > 2 and parts[2]:
                    titles[parts[1]] = parts[2]
    except (ValueError, OSError) as e:
        print(f"distill.medication.knowledge: error: {e}", file=sys.stderr)
        return 2
    if not titles or len(titles) < len(keys):
        from distill.data.codes import icd_titles

        titles = {**icd_titles(), **titles}
    from distill.features import distributed

    rank, world = distributed()
    table = code_knowledge(keys, titles, labels, a.backbone, a.out, names=names)
    if rank == 0:
        print(f"distill.medication.knowledge: {a.out} holds {len(table)} of the codes asked "
              f"({world} processes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
