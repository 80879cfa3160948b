"""LEADER-style prompts: a patient's record written as plain English for the teacher model.

LEADER (Liu et al., 2024) lets a language model read the patient's visits as text and finish the
sentence "... the patient should be prescribed:" through a multi-label head over ATC3 classes.
This module writes that text; the model, the head and the labels live elsewhere.

Choices, and why:

- Every past visit is written with ITS OWN diagnoses, procedures and drugs. The released LEADER
  code fills each past visit with the current visit's diagnoses, which throws the history away.
- Codes are written as their titles (`codes.title`), so a general-purpose teacher sees words it
  was trained on. A code with no title is written as the code itself: dropping it would hide
  information silently. Empty lists are written as "none" so each field is always present.
- The current visit's drugs are never written: they are what the model must predict.
- "The patient has N previous visits." counts every earlier visit, also those not shown, so the
  model knows how long the history is even when only the last `max_history` visits fit.
- Under a token budget the oldest shown visit goes first (the recent past matters most), then
  the profile, then the end of the current visit's lists; the first current diagnosis always
  stays, since a prompt without any current diagnosis says nothing about this visit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from distill.data.codes import title
from distill.data.records import Visit
from distill.data.samples import MedSample

# Bump whenever the wording changes: cached teacher outputs are keyed by `prompt_hash`.
TEMPLATE_VERSION = "leader-en/1"
CLOSING = "Based on this, the patient should be prescribed:"
MORE = "…"  # marks a list cut short by the token budget
NONE = "none"

# readable names for the profile fields the readers produce; others get "_" -> " "
_FIELD_NAMES = {"age_band": "age", "marital_status": "marital status"}

# separates prompts inside the hash so ["ab", "c"] and ["a", "bc"] differ
_HASH_SEPARATOR = "\x1e"


def field_name(field: str) -> str:
    """'age_band' -> 'age', 'marital_status' -> 'marital status'."""
    return _FIELD_NAMES.get(field, field.replace("_", " "))


def _titles(codes: Sequence[str], titles: dict[str, str] | None) -> tuple[str, ...]:
    return tuple(title(c, titles) for c in codes)


def _join(items: Sequence[str], cut: bool = False) -> str:
    if cut:
        return ", ".join([*items, MORE])
    return ", ".join(items) if items else NONE


@dataclass(frozen=True, slots=True)
class _PastVisit:
    number: int  # 1-based position among ALL earlier visits, oldest = 1
    before: int  # how many visits before the target it happened
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    drugs: tuple[str, ...]

    def sentence(self) -> str:
        ago = "1 visit" if self.before == 1 else f"{self.before} visits"
        return (
            f"Visit {self.number} ({ago} before this one): "
            f"diagnoses: {_join(self.diagnoses)}; "
            f"procedures: {_join(self.procedures)}; "
            f"prescribed drugs: {_join(self.drugs)}."
        )


@dataclass(frozen=True, slots=True)
class _Parts:
    """Everything a prompt says, already as titles; `render` writes it out."""

    profile: tuple[tuple[str, str], ...]
    n_previous: int
    shown: tuple[_PastVisit, ...]  # oldest first
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    diagnoses_cut: bool = False
    procedures_cut: bool = False

    def render(self) -> str:
        lines = []
        if self.profile:
            pairs = "; ".join(f"{field_name(k)} {v}" for k, v in self.profile)
            lines.append(f"Patient profile: {pairs}.")
        noun = "visit" if self.n_previous == 1 else "visits"
        lines.append(f"The patient has {self.n_previous} previous {noun}.")
        lines.extend(v.sentence() for v in self.shown)
        lines.append(
            f"Current visit: diagnoses: {_join(self.diagnoses, self.diagnoses_cut)}; "
            f"procedures: {_join(self.procedures, self.procedures_cut)}."
        )
        lines.append(CLOSING)
        return "\n".join(lines)

    def reductions(self) -> Iterator[_Parts]:
        """Ever shorter versions, in the order the budget gives things up; the last is minimal."""
        parts = self
        while parts.shown:
            parts = replace(parts, shown=parts.shown[1:])
            yield parts
        while parts.profile:
            parts = replace(parts, profile=parts.profile[:-1])
            yield parts
        while parts.procedures:
            parts = replace(parts, procedures=parts.procedures[:-1], procedures_cut=True)
            yield parts
        while len(parts.diagnoses) > 1:
            parts = replace(parts, diagnoses=parts.diagnoses[:-1], diagnoses_cut=True)
            yield parts


def _cap(items: tuple[str, ...], max_items: int | None) -> tuple[str, ...]:
    if max_items is None or len(items) <= max_items:
        return items
    return (*items[:max_items], MORE)


def _past_visits(
    history: Sequence[Visit], max_history: int, titles, max_items: int | None = None
) -> tuple[_PastVisit, ...]:
    n = len(history)
    first = max(0, n - max_history)
    return tuple(
        _PastVisit(
            number=i + 1,
            before=n - i,
            diagnoses=_cap(_titles(v.diagnoses, titles), max_items),
            procedures=_cap(_titles(v.procedures, titles), max_items),
            drugs=_cap(_titles(v.medications, titles), max_items),
        )
        for i, v in enumerate(history[first:], start=first)
    )


def build_prompt(
    sample: MedSample,
    *,
    titles: dict[str, str] | None = None,
    max_history: int = 3,
    profile: bool = True,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
    max_items: int | None = None,
) -> str:
    """The teacher's input text for one sample, ending with the fixed phrase `CLOSING`.

    `titles` adds code titles the shared tables lack (e.g. Synthea's SNOMED titles).
    `max_history` caps how many of the most recent earlier visits are written out.
    `max_items` caps each list of a past visit (diagnoses keep their seq order, so the primary
    ones stay), which lets more visits fit a small teacher's window.
    With `count_tokens` and `max_tokens` the prompt is shortened until it fits (see the module
    docstring for the order); if even the minimal prompt is too long, the minimal one is returned.
    """
    if max_history < 0:
        raise ValueError(f"max_history must be >= 0, got {max_history}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if max_tokens is not None and count_tokens is None:
        raise ValueError("max_tokens needs count_tokens to measure the prompt")
    target = sample.target
    parts = _Parts(
        profile=tuple(target.profile) if profile else (),
        n_previous=len(sample.history),
        shown=_past_visits(sample.history, max_history, titles, max_items),
        diagnoses=_titles(target.diagnoses, titles),
        procedures=_titles(target.procedures, titles),
    )
    text = parts.render()
    if count_tokens is None or max_tokens is None or count_tokens(text) <= max_tokens:
        return text
    for shorter in parts.reductions():
        text = shorter.render()
        if count_tokens(text) <= max_tokens:
            break
    return text


def prompt_hash(prompts: Sequence[str]) -> str:
    """sha256 over the template version and the prompts, to key caches of teacher outputs.

    The version goes in so a wording change invalidates old caches even if a prompt list
    happened to be identical; the separator keeps different splits of the same text apart.
    """
    h = hashlib.sha256(TEMPLATE_VERSION.encode("utf-8"))
    for p in prompts:
        h.update(_HASH_SEPARATOR.encode("utf-8"))
        h.update(p.encode("utf-8"))
    return h.hexdigest()


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """Token count of a text as a Hugging Face tokenizer feeds it to the model.

    Special tokens ([CLS], [SEP]) count, since they take room in the model's window; nothing is
    truncated, since the point is to find out whether the text fits before the model cuts it.
    """

    def count(text: str) -> int:
        # verbose=False: a prompt longer than the model's window is expected here (it is
        # measured in order to be shortened); without it the tokenizer warns "Token indices
        # sequence length is longer than the specified maximum sequence length (544 > 512)"
        enc = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)
        return len(enc["input_ids"])

    return count
