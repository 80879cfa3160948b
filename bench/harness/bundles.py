"""Which bundle to drive, and what to type into it: frequent diagnoses, each with words of its
title that the app's type-ahead finds."""

from __future__ import annotations

import contextlib
from pathlib import Path

from app.medication.bundle import load_bundle
from app.medication.codes import CodeIndex
from app.medication.state import code_index_of
from bench.harness.errors import SetupError
from bench.harness.server import SHIPPED_BUNDLE
from contract.bundle import BundleError


def sound_bundle(choice: str) -> Path | None:
    """The bundle folder `choice` names, else the shipped bundle when it is there and loads;
    None for `choice` "tiny" or an unusable shipped bundle (the caller's stand-in then)."""
    if choice == "tiny":
        return None
    if choice:
        return Path(choice)
    if (SHIPPED_BUNDLE / "manifest.json").is_file():
        with contextlib.suppress(BundleError):
            load_bundle(SHIPPED_BUNDLE)
            return SHIPPED_BUNDLE
    return None


def diagnosis_codes(bundle) -> list[str]:
    """The bundle's diagnosis vocabulary (frequent first) without the special tokens."""
    return [c for c in bundle.vocabs["diagnoses"] if c not in ("<pad>", "<unk>")]


def diagnosis_index(bundle) -> CodeIndex:
    """The type-ahead the app builds over the bundle's diagnoses (the whole dictionary)."""
    return code_index_of(bundle, "diagnoses")


def typeahead_query(index: CodeIndex, code: str) -> str | None:
    """Words of the code's title for which the type-ahead lists the code in its first three:
    two words (the second cut to five letters) preferred, else one word."""
    words = [w.lower() for w in index.title(code).replace(",", " ").split()]
    words = [w for w in words if w.isascii() and w.isalpha() and len(w) > 2][:4]
    tries = sorted((f"{a} {b[:5]}" for a, b in zip(words, words[1:], strict=False)), key=len)
    tries += sorted(words, key=len)
    for query in tries:
        if code in [option.code for option in index.search(query, limit=3)]:
            return query
    return None


def diagnosis_pool(bundle_dir: Path, n: int, need: int = 2) -> list[tuple[str, str]]:
    """Up to `n` frequent diagnoses (vocabulary order) with a title, each with a query that
    finds it; SetupError when fewer than `need` have one."""
    bundle = load_bundle(bundle_dir)
    index = diagnosis_index(bundle)
    pool = []
    for code in diagnosis_codes(bundle):
        if code not in bundle.titles:
            continue
        query = typeahead_query(index, code)
        if query:
            pool.append((code, query))
        if len(pool) == n:
            break
    if len(pool) < need:
        raise SetupError(f"only {len(pool)} diagnoses in {bundle_dir} have a usable query")
    return pool
