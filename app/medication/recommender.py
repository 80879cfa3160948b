"""The medication recommender: ranked drug classes for a visit, flagged at the bundle's
decision threshold, with the drug-drug interactions among them.

`Recommender` ties the pieces together: a verified bundle (`app.medication.bundle`), the live
visit's arrays (`app.medication.encoding`) and a backend (`app.medication.backends`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.medication.backends import NumpyBackend, OrtBackend, sigmoid
from app.medication.bundle import Bundle, load_bundle
from app.medication.encoding import code_list, encode_visit, trim_padding, visit_read
from app.onnx_session import onnxruntime_available
from contract.layout import code_ancestors, profile_tokens

BACKENDS = ("auto", "onnxruntime", "numpy")

__all__ = ["BACKENDS", "CodeError", "Recommendation", "Recommender", "resolve_codes"]


class CodeError(ValueError):
    """A code given without its system prefix that cannot be resolved."""


def resolve_codes(bundle: Bundle, kind: str, codes: Sequence[str]) -> list[str]:
    """`codes` of `kind` ("diagnoses" | "procedures") as the bundle writes them. A code with a
    system prefix ("icd9cm:4019") is kept (dots dropped: "icd9cm:401.9"; the system in lower
    case, the code in upper case where only that is known: "ICD10CM:i509"); one without
    ("4019", "401.9") gets the prefix of the one system whose vocabulary holds it, or of the
    only system the bundle has for `kind`. Raises `CodeError` naming the prefixes when the bare
    code is in several systems' vocabularies, or in none while the bundle has several."""
    vocab = bundle.vocabs[kind]
    systems = sorted({c.split(":", 1)[0] for c in vocab if ":" in c})
    out = []
    for raw in codes:
        code = raw.strip()
        system, sep, rest = code.partition(":")
        if sep:
            # systems are written in lower case, codes in upper case ("ICD10CM:i509" works too)
            system, rest = system.strip().lower(), rest.strip().replace(".", "")
            if f"{system}:{rest}" not in vocab and f"{system}:{rest.upper()}" in vocab:
                rest = rest.upper()
            out.append(f"{system}:{rest}")
            continue
        bare = code.replace(".", "")
        found = [s for s in systems if f"{s}:{bare}" in vocab or f"{s}:{bare.upper()}" in vocab]
        if len(found) == 1:
            hit = f"{found[0]}:{bare}"
            out.append(hit if hit in vocab else f"{found[0]}:{bare.upper()}")
        elif not found and len(systems) == 1:
            out.append(f"{systems[0]}:{bare}")
        elif found:
            choices = " or ".join(f"{s}:{bare}" for s in found)
            raise CodeError(f"{raw!r} is a code in several systems: write it as {choices}")
        else:
            raise CodeError(
                f"{raw!r} is no code the model knows in {' or '.join(systems) or 'any system'}; "
                f"write codes with their system prefix ({', '.join(f'{s}:...' for s in systems)})"
            )
    return out


@dataclass
class Recommendation:
    """Ranked drug classes for one visit.

    `drugs`: [{"code", "name", "probability", "suggested"}] best first (`top_k` of them);
    `ddi`: (code, code, name, name) for each interacting pair among the suggested drugs;
    `unknown_codes`: input codes the model does not know, left out of its input (profile
    values it does not know are in `unknown_profile`); `via_category`: those of them it still
    reads through their ICD category; `visit_read`: whether it reads anything of the current
    visit (a known code, or the category of an unknown one) -- when not, the scores are those
    of an empty visit and no caller should show them as suggestions;
    `backend`: "onnxruntime" or "numpy"; `threshold`: the bundle's decision threshold;
    `n_suggested`: classes at or above the threshold in the WHOLE ranking (more than
    `len(suggested)` when `top_k` cut the list: see `hidden_suggested`).
    """

    drugs: list[dict[str, Any]]
    ddi: list[tuple[str, str, str, str]]
    unknown_codes: list[str]
    backend: str
    threshold: float = 0.5
    n_suggested: int | None = None
    via_category: list[str] = field(default_factory=list)
    unknown_profile: list[str] = field(default_factory=list)
    visit_read: bool = True

    def __post_init__(self) -> None:
        if self.n_suggested is None:
            self.n_suggested = len(self.suggested)

    @property
    def suggested(self) -> list[dict[str, Any]]:
        return [d for d in self.drugs if d["suggested"]]

    @property
    def hidden_suggested(self) -> int:
        """Classes at or above the threshold that the `top_k` cut left out."""
        return int(self.n_suggested or 0) - len(self.suggested)


class Recommender:
    """Scores visits with a verified bundle; `backend` is "auto", "onnxruntime" or "numpy".

    "auto" uses onnxruntime when it can be imported, else the numpy re-implementation (some
    mobile builds ship without onnxruntime). `threads` sets onnxruntime's intra-op threads.
    """

    def __init__(self, bundle: Bundle | str | Path, backend: str = "auto", threads: int = 1):
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
        if backend == "auto":
            backend = "onnxruntime" if onnxruntime_available() else "numpy"
        self.bundle = bundle
        self.threads = threads
        self.engine: OrtBackend | NumpyBackend
        if backend == "onnxruntime":
            self.engine = OrtBackend(bundle.model_path, threads=threads)
        else:
            self.engine = NumpyBackend(bundle.weights_path, bundle.student_config)
        self.backend = backend

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    def encode(
        self,
        diagnoses: Sequence[str],
        procedures: Sequence[str],
        history: Sequence[Any] = (),
        profile: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        return encode_visit(self.bundle, diagnoses, procedures, history, profile)

    def logits(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.engine.run(trim_padding(inputs))

    def scores(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Probabilities [B, n_labels] (sigmoid of the logits), float32."""
        return sigmoid(self.logits(inputs))

    def recommend(
        self,
        diagnoses: Sequence[str],
        procedures: Sequence[str],
        history: Sequence[Any] = (),
        profile: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        top_k: int | None = 10,
    ) -> Recommendation:
        """The `top_k` most probable drug classes (all with None), flagged at the threshold."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise TypeError(f"top_k must be an integer or None; got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1; got {top_k}")
        inputs, unknown = self.encode(diagnoses, procedures, history, profile)
        tokens = set(profile_tokens(profile))
        unknown_profile = [t for t in unknown if t in tokens]
        unknown = [c for c in unknown if c not in tokens]
        via = self.via_category(unknown)
        probs = self.scores(inputs)[0]
        order = np.argsort(-probs, kind="stable")  # ties: label order
        b = self.bundle
        n_suggested = int((probs >= b.threshold).sum())
        if top_k is not None:
            order = order[:top_k]
        drugs = [
            {
                "code": b.label_codes[i],
                "name": b.label_names[i],
                "probability": float(probs[i]),
                "suggested": bool(probs[i] >= b.threshold),
            }
            for i in order
        ]
        suggested = [d["code"] for d in drugs if d["suggested"]]
        pairs = [
            (x, y, b.label_name(x), b.label_name(y))
            for i, x in enumerate(suggested)
            for y in suggested[i + 1 :]
            if b.interacts(x, y)
        ]
        return Recommendation(
            drugs,
            pairs,
            unknown,
            self.backend,
            b.threshold,
            n_suggested,
            via_category=via,
            unknown_profile=unknown_profile,
            visit_read=visit_read(inputs),
        )

    def via_category(self, codes: Sequence[str]) -> list[str]:
        """Those of `codes` (unknown ones) whose ICD category the model knows and reads in
        their place (bundles with the code hierarchy on)."""
        if not self.bundle.tensor_config.ancestors:
            return []
        known = self.bundle.vocabs
        return [
            c
            for c in codes
            if any(a in known["diagnoses"] or a in known["procedures"] for a in code_ancestors(c))
        ]

    def ddi_with(
        self,
        drugs: Recommendation | Iterable[dict[str, Any] | str],
        accepted: Iterable[str],
    ) -> list[tuple[str, str, str, str]]:
        """(drug, accepted, drug name, accepted name) for each suggested drug that interacts
        with an already accepted drug code. `drugs`: a Recommendation, its `drugs` list (only
        the suggested ones count) or plain codes."""
        items = drugs.drugs if isinstance(drugs, Recommendation) else drugs
        codes = []
        for item in items:
            if isinstance(item, str):
                codes.append(item)
            elif item.get("suggested", True):
                codes.append(item["code"])
        accepted = code_list(accepted, "accepted")
        b = self.bundle
        return [
            (x, y, b.label_name(x), b.label_name(y))
            for x in codes
            for y in dict.fromkeys(accepted)
            if b.interacts(x, y)
        ]
