"""Type-ahead over codes and their titles (diagnoses, procedures) or drug classes and their
names: `CodeIndex.search` gives the options the visit screen lists as the clinician types.

The app searches the whole shipped ICD-9/ICD-10 dictionary (`assets/dictionary/`, read with the
standard library only), not only the codes the model has seen: a code the model has never seen
is still a valid entry (`CodeOption.known` is False and its label says so). Every option names its
version ("ICD-9", "ICD-10"); the bundle's own version comes first (`preferred`). Common
abbreviations and synonyms ("copd", "mi", "stroke", "echocardiogram", ...) are searched as the
words of their titles (`SYNONYMS`). Drug classes are found by their ATC name and by the names of
the substances in them (WHO ATC levels 4 and 5: "furosemide" finds C03C).
"""

from __future__ import annotations

import bisect
import csv
import functools
import gzip
import io
import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DICTIONARY_DIR = Path(__file__).resolve().parents[2] / "assets" / "dictionary"
ICD_FILE = "icd_titles.csv.gz"
SUPPLEMENT_FILE = "icd_supplement.csv"  # codes newer than the MIMIC dictionaries (COVID-19)
ATC_FILE = "atc_coding.csv.gz"
SYSTEMS = {"diagnoses": ("icd9cm", "icd10cm"), "procedures": ("icd9pcs", "icd10pcs")}
VERSION = {"icd9cm": "ICD-9", "icd10cm": "ICD-10", "icd9pcs": "ICD-9", "icd10pcs": "ICD-10"}
CODE_PREFIX_LIMIT = 2000  # candidates taken from one code prefix ("4" matches thousands)
SHORT_WORD = 2  # query words this short match whole title words only, outside the known codes

# abbreviation or everyday word -> title words that mean it (each alternative is searched)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "copd": ("chronic obstructive pulmonary", "chronic airway obstruction", "obstructive chronic"),
    "emphysema": ("emphysema",),
    "stroke": ("cerebral infarction", "cerebral artery occlusion", "stroke"),
    "cva": ("cerebral infarction", "cerebral artery occlusion"),
    "tia": ("transient cerebral ischemia",),
    "depression": ("depressive", "depression"),
    "covid": ("covid", "coronavirus"),
    "corona": ("covid", "coronavirus"),
    "sars": ("sars", "coronavirus"),
    "pregnancy": ("pregnancy", "pregnant", "gestation"),
    "pregnant": ("pregnancy", "pregnant"),
    "echocardiogram": ("ultrasound of heart", "ultrasonography of heart", "echocardiography"),
    "echo": ("ultrasound of heart", "ultrasonography of heart", "echocardiography"),
    "intubation": ("insertion of endotracheal", "endotracheal airway", "intubation"),
    "xray": ("x-ray", "radiograph", "plain radiography"),
    "radiograph": ("x-ray", "plain radiography"),
    "mi": ("myocardial infarction",),
    "heart attack": ("myocardial infarction",),
    "stemi": ("st elevation myocardial infarction", "myocardial infarction"),
    "nstemi": ("non-st elevation myocardial infarction", "subendocardial infarction"),
    "chf": ("congestive heart failure", "heart failure"),
    "hf": ("heart failure",),
    "uti": ("urinary tract infection",),
    "dka": ("diabetes ketoacidosis", "diabetic ketoacidosis"),
    "htn": ("hypertension",),
    "afib": ("atrial fibrillation",),
    "af": ("atrial fibrillation",),
    "cad": ("coronary atherosclerosis", "atherosclerotic heart disease"),
    "ckd": ("chronic kidney disease",),
    "aki": ("acute kidney failure", "acute kidney injury"),
    "arf": ("acute kidney failure", "acute respiratory failure"),
    "pe": ("pulmonary embolism",),
    "dvt": ("deep vein thrombosis", "deep vessels", "thrombosis of deep"),
    "gerd": ("esophageal reflux", "gastro-esophageal reflux"),
    "gi bleed": ("gastrointestinal hemorrhage",),
    "osa": ("obstructive sleep apnea",),
    "bph": ("hyperplasia of prostate",),
    "ards": ("respiratory distress syndrome",),
    "dm": ("diabetes mellitus",),
    "t2dm": ("type 2 diabetes", "diabetes type ii", "diabetes mellitus without mention"),
    "t1dm": ("type 1 diabetes", "diabetes type i"),
    "hld": ("hyperlipidemia",),
    "cabg": ("coronary artery bypass", "aortocoronary bypass", "bypass coronary artery"),
    "pci": ("percutaneous transluminal coronary", "dilation of coronary artery"),
    "ecg": ("electrocardiogram",),
    "ekg": ("electrocardiogram",),
    "ct": ("computerized axial tomography", "computerized tomography"),
    "mri": ("magnetic resonance imaging",),
    "dialysis": ("hemodialysis", "dialysis"),
    "sepsis": ("sepsis", "septicemia"),
    "flu": ("influenza",),
    "hiv": ("human immunodeficiency virus",),
    "etoh": ("alcohol",),
}

__all__ = [
    "CodeIndex",
    "CodeOption",
    "DICTIONARY_DIR",
    "SYNONYMS",
    "dictionary_index",
    "drug_substances",
    "fold",
    "system_of",
]

_WORD = re.compile(r"[0-9a-z]+")
_NOT_WORD = re.compile(r"[^0-9a-z\n]+")
_NEWLINE = re.compile("\n")


def fold(text: str) -> str:
    """Case and accents folded, white space collapsed ("Ménière" -> "meniere")."""
    text = str(text)
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def system_of(code: str) -> str:
    return code.split(":", 1)[0] if ":" in code else ""


@dataclass(frozen=True)
class CodeOption:
    """One type-ahead option: a code and its title (a diagnosis, procedure or drug class);
    `version` "ICD-9"/"ICD-10" (empty for drug classes), `known`: the model has seen it."""

    code: str
    title: str
    version: str = ""
    known: bool = True

    @property
    def label(self) -> str:
        text = (
            f"{self.code} — {self.title}" if self.title and self.title != self.code else self.code
        )
        if self.version:
            text += f"  · {self.version}"
        if not self.known:
            text += " · not seen by the model"
        return text


class CodeIndex:
    """Type-ahead over (code, title) pairs, given in the order used to break ties (the vocabulary
    order, which is by frequency in the training data).

    A query matches a code when the code, or its part after "system:", starts with it (dots and
    spaces ignored: "401.9" finds "icd9cm:4019"), or when every word of the query starts a word
    of the title (case- and accent-insensitive: "atri fib" finds "Atrial fibrillation"), or when
    it is one of `synonyms` (or has one among its words) and the title matches what it stands
    for. Ranking: exact code first; for an abbreviation, what it stands for; then codes in
    `known` (the model's vocabulary, in its order); then what the typed words found before what
    only a synonym found; then the `preferred` system; then titles that start with the query,
    then the other matches.
    `versions` maps a system to the name shown ("icd9cm" -> "ICD-9").
    """

    def __init__(
        self,
        items: Iterable[tuple[str, str]],
        *,
        known: Mapping[str, int] | None = None,
        preferred: str | None = None,
        versions: Mapping[str, str] | None = None,
        synonyms: Mapping[str, tuple[str, ...]] | None = None,
    ):
        codes: list[str] = []
        titles: list[str] = []
        seen: set[str] = set()
        for code, title in items:
            if code in seen:  # a repeated code: the first title wins
                continue
            seen.add(code)
            codes.append(code)
            titles.append(title or code)
        self._codes = codes
        self._titles = titles
        self._folded = [fold(t) for t in titles]
        # every title's words, a line each, a space before and after every word: a query word
        # is then a plain substring (" atri" starts a word, " mi " is one), found by the C
        # string search; building costs a few joins
        words = _NOT_WORD.sub(" ", "\n".join(self._folded))
        self._blob = " " + words.replace("\n", " \n ") + " \n"
        self._starts = [0] + [m.end() for m in _NEWLINE.finditer(self._blob)]
        self._code_blob = "\n" + "\n".join(c.casefold() for c in codes) + "\n"
        self._code_starts = [m.end() for m in _NEWLINE.finditer(self._code_blob)]
        self._row = {c: i for i, c in enumerate(codes)}
        self.known = dict(known) if known is not None else {c: i for i, c in enumerate(codes)}
        self.preferred = preferred
        self.versions = dict(versions or {})
        self.synonyms = {fold(k): v for k, v in (synonyms or {}).items()}
        self._known_list = [self._row[c] for c in self.known if c in self._row]
        self._title_words = {r: tuple(_WORD.findall(self._folded[r])) for r in self._known_list}

    def __len__(self) -> int:
        return len(self._codes)

    def __contains__(self, code: object) -> bool:
        return code in self._row

    def title(self, code: str) -> str:
        row = self._row.get(code)
        return self._titles[row] if row is not None else code

    def option(self, code: str) -> CodeOption:
        return CodeOption(
            code, self.title(code), self.versions.get(system_of(code), ""), code in self.known
        )

    # -- matching

    @staticmethod
    def _rows_of(matches, starts: list[int]) -> set[int]:
        return {bisect.bisect_right(starts, m.start()) - 1 for m in matches}

    def _word_rows(self, word: str, whole: bool = False) -> set[int]:
        """Rows with a title word that starts with `word` (that is `word`, when it is short)."""
        needle = " " + word + (" " if whole or len(word) <= SHORT_WORD else "")
        return self._rows_of(re.finditer(re.escape(needle), self._blob), self._starts)

    def _words_rows(self, words: list[str], whole: bool = False) -> set[int]:
        """Rows whose title has, for every word, a word starting with it (`whole`: that is it)."""
        if not words:
            return set()
        sets = sorted((self._word_rows(w, whole) for w in words), key=len)
        rows = sets[0]
        for other in sets[1:]:
            rows = rows & other
            if not rows:
                break
        return rows

    def _known_rows(self, words: list[str]) -> set[int]:
        """Known codes (a few thousand at most) whose title words start with every word."""
        out = set()
        for r in self._known_list:
            title_words = self._title_words[r]
            if all(any(tw.startswith(w) for tw in title_words) for w in words):
                out.add(r)
        return out

    def _code_rows(self, compact: str) -> tuple[set[int], set[int]]:
        """(exact, prefix) rows for a code typed without dots or spaces: the whole code
        ("icd9cm:4019") or its part after "system:" ("4019")."""
        if not compact or "\n" in compact:
            return set(), set()
        exact, prefix = set(), set()
        for needle in ("\n" + compact, ":" + compact):
            for m in re.finditer(re.escape(needle), self._code_blob):
                # +1: a "\n" needle starts on the newline before its row
                row = bisect.bisect_right(self._code_starts, m.start() + 1) - 1
                code = self._codes[row].casefold()
                if compact in (code, code.split(":", 1)[-1]):
                    exact.add(row)
                elif len(prefix) < CODE_PREFIX_LIMIT and (
                    code.startswith(compact) or code.split(":", 1)[-1].startswith(compact)
                ):
                    prefix.add(row)
        return exact, prefix - exact

    def _alternatives(self, text: str) -> list[str]:
        """The query and what its abbreviations and synonyms stand for."""
        out = []
        key = text.replace("-", "").replace(" ", "")
        for k in (text, key):
            out += list(self.synonyms.get(k, ()))
        words = text.split()
        for n, word in enumerate(words):
            for expansion in self.synonyms.get(word.replace("-", ""), ()):
                out.append(" ".join(words[:n] + [expansion] + words[n + 1 :]))
        return list(dict.fromkeys(fold(a) for a in out if fold(a) != text))

    def search(self, query: str, limit: int = 20) -> list[CodeOption]:
        text = fold(query)
        if not text or limit < 1:
            return []
        compact = text.replace(".", "").replace(" ", "")
        exact, prefix = self._code_rows(compact)
        words = _WORD.findall(text)
        word_rows = self._words_rows(words) | (self._known_rows(words) if words else set())
        starts = {r for r in word_rows if self._folded[r].startswith(text)}
        synonym_rows: set[int] = set()
        for alternative in self._alternatives(text):
            rows = self._words_rows(_WORD.findall(alternative))
            synonym_rows |= rows
            starts |= {r for r in rows if self._folded[r].startswith(alternative)}
        candidates = exact | prefix | word_rows | synonym_rows
        if not candidates:
            return []
        direct = exact | prefix | word_rows  # found by what was typed, not by a synonym
        unknown_order = len(self.known) + len(self._codes)
        # a query that is an abbreviation ("mi"): what it stands for, and titles with it as a
        # whole word, before titles with words that merely start so ("mixed")
        if text.replace("-", "") in self.synonyms:
            whole = self._words_rows(words, whole=True)
            strong = synonym_rows | whole
            starts |= {r for r in whole if self._folded[r].startswith(text)}
        else:
            strong = candidates

        def key(r: int) -> tuple:
            code = self._codes[r]
            order = self.known.get(code)
            return (
                r not in exact,
                r not in strong,
                order is None,
                r not in direct,
                system_of(code) != self.preferred if self.preferred else False,
                r not in starts,
                order if order is not None else unknown_order + r,
            )

        ranked = sorted(candidates, key=key)[:limit]
        return [self.option(self._codes[r]) for r in ranked]


# ------------------------------------------------------------------ the shipped dictionaries


def _read_csv_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rb") as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))


@functools.lru_cache(maxsize=4)
def _icd_rows(folder: str) -> tuple[tuple[str, str, str], ...]:
    path = Path(folder) / ICD_FILE
    rows = []
    if path.is_file():
        rows = [(r["system"], r["code"], r["title"]) for r in _read_csv_gz(path)]
    extra = Path(folder) / SUPPLEMENT_FILE
    if extra.is_file():
        with extra.open(encoding="utf-8", newline="") as f:
            rows += [(r["system"], r["code"], r["title"]) for r in csv.DictReader(f)]
    return tuple(rows)


_build_lock = threading.Lock()


def dictionary_index(
    kind: str,
    vocab: Iterable[str] = (),
    titles: Mapping[str, str] | None = None,
    preferred: str | None = None,
    folder: str | Path = DICTIONARY_DIR,
) -> CodeIndex:
    """Every code of `kind` ("diagnoses" or "procedures") in the shipped ICD dictionaries plus
    the model's `vocab` (its order ranks the known codes first), titles from the dictionary or
    `titles`, the `preferred` system first. Without the dictionary file: the vocabulary only."""
    systems = SYSTEMS[kind]
    vocab = [c for c in vocab if c not in ("<pad>", "<unk>")]
    titles = dict(titles or {})
    with _build_lock:
        rows = _icd_rows(str(folder))
    items = [(c, titles.get(c, c)) for c in vocab]
    items += [(f"{system}:{code}", title) for system, code, title in rows if system in systems]
    return CodeIndex(
        items,
        known={c: i for i, c in enumerate(vocab)},
        preferred=preferred,
        versions={s: VERSION[s] for s in systems},
        synonyms=SYNONYMS,
    )


@functools.lru_cache(maxsize=4)
def _atc_names(folder: str) -> tuple[tuple[str, str], ...]:
    path = Path(folder) / ATC_FILE
    if not path.is_file():
        return ()
    return tuple((r["atc_code"], r["atc_name"]) for r in _read_csv_gz(path))


def drug_substances(
    classes: Iterable[str], folder: str | Path = DICTIONARY_DIR
) -> dict[str, list[str]]:
    """ATC level-3 class (4 characters, "C03C") -> the names of its level-4 groups and level-5
    substances in the WHO ATC index ("furosemide", ...), for the classes given."""
    out: dict[str, list[str]] = {c: [] for c in classes}  # in the order given
    wanted = set(out)
    for code, name in _atc_names(str(folder)):
        if len(code) > 4 and code[:4] in wanted and name:
            out[code[:4]].append(name)
    return out
