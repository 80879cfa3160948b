"""MIND (Microsoft News Dataset) reader, a time split and a generator of MIND-format data.

MIND itself may not be redistributed: nothing of it is shipped or committed. Tests run on
`generate_mind` output, and `distill.data.movielens` turns the shipped MovieLens sample into the
same format.

Files (tab-separated, no header, UTF-8; `.tsv` or `.tsv.gz`):

- `news.tsv`: news_id, category, subcategory, title, abstract, url, title_entities,
  abstract_entities. The first five fields are read; a row has 5 to 8 fields.
- `behaviors.tsv`: impression_id, user_id, time ("11/11/2019 9:05:58 AM"), history (clicked news
  ids, oldest first, space-separated, may be empty), impressions ("N123-1 N456-0": clicked / shown
  but not clicked). Exactly 5 fields.

Lines are split on tabs, never parsed as CSV, so quotes inside titles are plain text.

What the reader does with problems:

- Hard errors (`DataError`, naming the file, the line and what was expected): wrong field count,
  empty id, a token that is not "id-0" / "id-1", an unparsable time, an empty impression list, a
  news id given twice with different fields, a duplicate impression id, a line not UTF-8.
- Counted in `MindReport` (the reader goes on): a history id missing from news.tsv is dropped from
  that history; an impression with a candidate missing from news.tsv is skipped whole by default
  (`unknown_candidates="skip"`: dropping just the candidate could drop its click); blank lines;
  identical repeats of a news row (MINDsmall's train and dev news.tsv joined), skipped.
- `unknown_candidates="drop"` (`pocketrec ... --format mind --mind-unknown drop`), for samples
  whose news.tsv lacks rows for many ids (a public MINDsmall sample does): the unknown
  candidates are dropped from the impression instead and counted (`dropped_candidate_ids`,
  `dropped_clicks`, `impressions_with_dropped_candidates`); an impression left with no candidate,
  or with no click when it had one, is still skipped and counted under its own reason.
- When nothing is left, the error prints the counts (rows read, the skips by reason, unknown
  ids with examples) and says how to keep such impressions.
- Unlabeled impressions (the MIND test split writes "N123" with no label) are rejected by default
  with an error that says how to accept them: `allow_unlabeled=True` reads them with label -1.
  One impression is either fully labeled or fully unlabeled.

`Impression.time` holds the canonical 'YYYY-MM-DD HH:MM:SS' used by the other readers, so times
sort as text; `format_mind_time` gives the MIND spelling back.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from distill.data.mind_report import MindReport, unknown_candidates_hint
from distill.data.records import Impression
from distill.data.tables import DataError, open_bytes

UNLABELED = -1
NEWS_FIELDS = (5, 8)  # fewest and most fields a news.tsv row may have
BEHAVIOR_FIELDS = 5
UNKNOWN_CANDIDATES = ("skip", "drop")  # what to do with an impression's unknown candidates

_MIND_TIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)")
_CANONICAL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class NewsItem:
    item_id: str
    category: str
    subcategory: str
    title: str
    abstract: str


@dataclass(slots=True)
class NewsData:
    items: dict[str, NewsItem]
    impressions: list[Impression]
    report: MindReport


# ---------------------------------------------------------------------------------------- times


def parse_mind_time(text: str) -> str | None:
    """'11/11/2019 9:05:58 AM' -> '2019-11-11 09:05:58'; None when it is not such a time."""
    m = _MIND_TIME.fullmatch(text.strip())
    if m is None:
        return None
    month, day, year, hour, minute, second, half = m.groups()
    h = int(hour)
    if not 1 <= h <= 12:
        return None
    h = h % 12 + (12 if half == "PM" else 0)
    try:
        t = datetime(int(year), int(month), int(day), h, int(minute), int(second))
    except ValueError:
        return None
    return t.strftime("%Y-%m-%d %H:%M:%S") if t.year >= 1000 else None


def format_mind_time(canonical: str) -> str:
    """'2019-11-11 09:05:58' -> '11/11/2019 9:05:58 AM' (MIND's spelling, no leading zeros)."""
    m = _CANONICAL_TIME.fullmatch(canonical)
    if m is None:
        raise ValueError(f"expected a time such as 2019-11-11 09:05:58, got {canonical!r}")
    year, month, day, hour, minute, second = m.groups()
    h = int(hour)
    half = "PM" if h >= 12 else "AM"
    return f"{int(month)}/{int(day)}/{year} {(h + 11) % 12 + 1}:{minute}:{second} {half}"


# ---------------------------------------------------------------------------------------- files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line ending), decoding each line on its own so a
    bad byte is reported on its own line."""
    n = 0
    try:
        with open_bytes(path) as f:
            for n, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: line {n}: not UTF-8 text: {e.reason}") from None
                if n == 1:
                    text = text.removeprefix("\ufeff")
                yield n, text.rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data after line {n}: {e}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def find_tsv(folder: Path, name: str) -> Path:
    """`name`.tsv or `name`.tsv.gz in `folder`, whatever the letter case of the file name."""
    folder = Path(folder)
    wanted = {f"{name}.tsv", f"{name}.tsv.gz"}
    hits = (
        sorted(p for p in folder.iterdir() if p.name.lower() in wanted) if folder.is_dir() else []
    )
    if not hits:
        raise DataError(f"{folder}: missing {name}.tsv (or {name}.tsv.gz)")
    return hits[0]


# ----------------------------------------------------------------------------------------- news


def read_news(path: Path, report: MindReport | None = None) -> dict[str, NewsItem]:
    """news id -> item, in file order. Fails on a malformed row or an id given twice with
    different fields; identical repeats are counted (`repeated_news_rows`) and skipped."""
    path = Path(path)
    report = report if report is not None else MindReport()
    report.news_file = str(path)
    items: dict[str, NewsItem] = {}
    first_line: dict[str, int] = {}
    lo, hi = NEWS_FIELDS
    for n, line in _lines(path):
        if not line.strip():
            report.blank_lines += 1
            continue
        fields = line.split("\t")
        if not lo <= len(fields) <= hi:
            raise DataError(
                f"{path}: line {n}: {len(fields)} tab-separated fields, expected {lo} to {hi} "
                "(news_id, category, subcategory, title, abstract, url, title_entities, "
                "abstract_entities)"
            )
        item_id = fields[0].strip()
        if not item_id or any(c.isspace() for c in item_id):
            raise DataError(f"{path}: line {n}: news id is {fields[0]!r}, expected an id (N1234)")
        item = NewsItem(item_id, *(f.strip() for f in fields[1:5]))
        if item_id in items:  # an identical repeat (train + dev news.tsv joined) is counted
            if items[item_id] == item:
                report.repeated_news_rows += 1
                continue
            raise DataError(
                f"{path}: line {n}: news id {item_id} again (first on line {first_line[item_id]})"
                " with a different category, title or abstract; expected each id once"
            )
        items[item_id], first_line[item_id] = item, n
        report.news_rows += 1
    if not items:
        raise DataError(f"{path}: no news rows (expected news_id<TAB>category<TAB>... lines)")
    return items


# ------------------------------------------------------------------------------------ behaviors


def _check_id(value: str, what: str, path: Path, n: int) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise DataError(f"{path}: line {n}: {what} is {value!r}, expected a non-empty id")
    return value


def parse_behavior_line(
    line: str, path: Path | str = "<behaviors>", n: int = 1, allow_unlabeled: bool = False
) -> Impression:
    """One behaviors.tsv line (without its line ending) -> `Impression`, or a `DataError`."""
    fields = line.split("\t")
    if len(fields) != BEHAVIOR_FIELDS:
        raise DataError(
            f"{path}: line {n}: {len(fields)} tab-separated fields, expected {BEHAVIOR_FIELDS} "
            "(impression_id, user_id, time, history, impressions)"
        )
    impression_id = _check_id(fields[0], "impression id", path, n)
    user_id = _check_id(fields[1], "user id", path, n)
    time = parse_mind_time(fields[2])
    if time is None:
        raise DataError(
            f"{path}: line {n}: time is {fields[2]!r}, expected a time such as "
            "11/11/2019 9:05:58 AM"
        )
    tokens = fields[4].split()
    if not tokens:
        raise DataError(
            f"{path}: line {n}: no impressions, expected space-separated id-label tokens "
            "such as N123-1 N456-0"
        )
    candidates, labels = [], []
    for tok in tokens:
        item, dash, label = tok.rpartition("-")
        if not dash:  # no label at all: the MIND test split
            if not allow_unlabeled:
                raise DataError(
                    f"{path}: line {n}: impression {tok!r} has no label, expected id-label such "
                    "as N123-1 or N123-0 (for MIND's unlabeled test split pass "
                    "allow_unlabeled=True)"
                )
            item, label_id = tok, UNLABELED
        elif label in ("0", "1") and item:
            label_id = int(label)
        else:
            raise DataError(
                f"{path}: line {n}: impression {tok!r}, expected id-label with label 0 or 1 "
                "(such as N123-1)"
            )
        candidates.append(item)
        labels.append(label_id)
    if UNLABELED in labels and any(x != UNLABELED for x in labels):
        raise DataError(
            f"{path}: line {n}: labeled and unlabeled impressions mixed, expected all "
            "id-label tokens or (for a test split) all bare ids"
        )
    return Impression(
        impression_id=impression_id,
        user_id=user_id,
        time=time,
        history=tuple(fields[3].split()),
        candidates=tuple(candidates),
        labels=tuple(labels),
    )


def format_behavior_line(imp: Impression) -> str:
    """The behaviors.tsv line (no line ending) that `parse_behavior_line` reads back as `imp`."""
    tokens = (
        c if label == UNLABELED else f"{c}-{label}"
        for c, label in zip(imp.candidates, imp.labels, strict=True)
    )
    return "\t".join(
        [
            imp.impression_id,
            imp.user_id,
            format_mind_time(imp.time),
            " ".join(imp.history),
            " ".join(tokens),
        ]
    )


def read_behaviors(
    path: Path,
    items: dict[str, NewsItem] | None = None,
    report: MindReport | None = None,
    allow_unlabeled: bool = False,
    unknown_candidates: str = "skip",
) -> Iterator[Impression]:
    """Stream the impressions of a behaviors.tsv, line by line.

    With `items`, history ids missing from it are dropped and counted, and impressions with a
    candidate missing from it are skipped and counted (`unknown_candidates="skip"`) or lose
    those candidates, counted (`"drop"`; see the module docstring); `report` collects the counts
    as the iterator runs.
    """
    if unknown_candidates not in UNKNOWN_CANDIDATES:
        raise ValueError(
            f"unknown_candidates must be one of {', '.join(UNKNOWN_CANDIDATES)}; "
            f"got {unknown_candidates!r}"
        )
    path = Path(path)
    report = report if report is not None else MindReport()
    report.behaviors_file = str(path)
    report.unknown_candidates = unknown_candidates
    first_line: dict[str, int] = {}
    for n, line in _lines(path):
        if not line.strip():
            report.blank_lines += 1
            continue
        imp = parse_behavior_line(line, path, n, allow_unlabeled)
        report.behavior_rows += 1
        if imp.impression_id in first_line:
            raise DataError(
                f"{path}: line {n}: duplicate impression id {imp.impression_id} (first on line "
                f"{first_line[imp.impression_id]}); expected each id once"
            )
        first_line[imp.impression_id] = n
        if items is not None:
            unknown = [c for c in imp.candidates if c not in items]
            if unknown:
                report.unknown_candidate_ids += len(unknown)
                for c in unknown:
                    report.note_unknown(c)
                if unknown_candidates == "skip":
                    report.skipped["candidate not in news.tsv"] += 1
                    continue
                pairs = [(c, y) for c, y in zip(imp.candidates, imp.labels, strict=True)]
                known = [(c, y) for c, y in pairs if c in items]
                lost_clicks = sum(1 for c, y in pairs if c not in items and y == 1)
                if not known:
                    report.skipped["no candidate in news.tsv"] += 1
                    continue
                if lost_clicks and not any(y == 1 for _, y in known):
                    report.skipped["every clicked candidate not in news.tsv"] += 1
                    continue
                report.dropped_candidate_ids += len(unknown)
                report.dropped_clicks += lost_clicks
                report.impressions_with_dropped_candidates += 1
                imp = Impression(
                    imp.impression_id,
                    imp.user_id,
                    imp.time,
                    imp.history,
                    tuple(c for c, _ in known),
                    tuple(y for _, y in known),
                )
            kept = tuple(h for h in imp.history if h in items)
            if len(kept) != len(imp.history):
                report.unknown_history_ids += len(imp.history) - len(kept)
                report.impressions_with_unknown_history += 1
                for h in imp.history:
                    if h not in items:
                        report.note_unknown(h)
                imp = Impression(
                    imp.impression_id, imp.user_id, imp.time, kept, imp.candidates, imp.labels
                )
        report.impressions += 1
        if not imp.history:
            report.empty_histories += 1
        if imp.labels[0] == UNLABELED:
            report.unlabeled_impressions += 1
        elif 1 not in imp.labels:
            report.impressions_without_click += 1
        elif 0 not in imp.labels:  # e.g. every unclicked candidate dropped as unknown
            report.impressions_without_negative += 1
        yield imp


def mind_folder(folder: Path, split: str | None = None) -> Path:
    """The folder holding news.tsv and behaviors.tsv: `folder` itself, or `folder`/`split` for
    MINDsmall's layout (train/ and dev/ subfolders, which the CLI takes as --path)."""

    def holds(d: Path) -> bool:
        return any(p.name.lower().startswith(("news.tsv", "behaviors.tsv")) for p in d.iterdir())

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory (expected a MIND folder)")
    if split is not None:
        sub = folder / split
        if not sub.is_dir():
            found = sorted(p.name for p in folder.iterdir() if p.is_dir())
            raise DataError(
                f"{folder}: no {split}/ subfolder (found: {', '.join(found) or 'none'})"
            )
        return sub
    splits = [p for p in sorted(folder.iterdir()) if p.is_dir() and holds(p)]
    if splits and not holds(folder):
        raise DataError(
            f"{folder}: no news.tsv or behaviors.tsv here; they are in split subfolders: "
            f"pass {' or '.join(f'--path {p}' for p in splits)}"
        )
    return folder


def load_mind(
    folder: Path,
    split: str | None = None,
    allow_unlabeled: bool = False,
    unknown_candidates: str = "skip",
) -> NewsData:
    """Read news.tsv and behaviors.tsv of `folder` (or of `folder`/`split`).

    `unknown_candidates`: "skip" (default) an impression with a candidate missing from
    news.tsv, or "drop" just those candidates (see the module docstring). Raises `DataError`
    with the counts when no impression is left."""
    where = mind_folder(folder, split)
    report = MindReport()
    items = read_news(find_tsv(where, "news"), report)
    impressions = list(
        read_behaviors(
            find_tsv(where, "behaviors"), items, report, allow_unlabeled, unknown_candidates
        )
    )
    if not impressions:
        raise DataError(
            f"{where}: no impressions left after reading ({report.summary()})"
            + unknown_candidates_hint(report)
        )
    return NewsData(items, impressions, report)


# ---------------------------------------------------------------------------------------- split


def time_split(
    impressions: Iterable[Impression], val_share: float = 0.1, test_share: float = 0.2
) -> tuple[list[Impression], list[Impression], list[Impression]]:
    """(train, validation, test) by time: sorted by (time, impression id), the last `test_share`
    are test and the `val_share` before them validation (shares rounded to whole impressions).
    Impressions with the same time may fall on both sides of a boundary."""
    if val_share < 0 or test_share < 0 or val_share + test_share >= 1:
        raise ValueError(
            f"shares must be >= 0 and leave some training data; got val {val_share}, "
            f"test {test_share}"
        )
    ordered = sorted(impressions, key=lambda i: (i.time, i.impression_id))
    n = len(ordered)
    n_test = round(n * test_share)
    n_val = round(n * val_share)
    cut_val = n - n_test - n_val
    return ordered[:cut_val], ordered[cut_val : n - n_test], ordered[n - n_test :]


# ------------------------------------------------------------------------------------ generator

TOPICS = {
    "sports": "match goal coach league season striker playoff champion stadium referee",
    "finance": "market stocks investor bank inflation earnings bond dividend trader profit",
    "health": "doctor vaccine hospital diet patient clinic therapy fitness virus nurse",
    "travel": "flight hotel beach passport island cruise resort airport tourist journey",
    "food": "recipe chef bakery pasta dessert kitchen restaurant spice grill harvest",
    "music": "album concert guitar singer festival band melody chart tour lyric",
    "science": "telescope planet research physics fossil laboratory genome rocket climate atom",
    "politics": "senate election minister vote campaign policy congress governor debate law",
}
FILLERS = (
    "new today report says after week big first why how could more inside year best what "
    "latest here people life"
).split()
START_TIME = datetime(2019, 11, 9, 0, 0, 0)


def write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_news_line(item: NewsItem, url: str = "") -> str:
    """A news.tsv line with empty entity columns. Tabs and line breaks in a field become spaces."""
    fields = [item.item_id, item.category, item.subcategory, item.title, item.abstract, url]
    clean = [" ".join(f.replace("\t", " ").splitlines()) for f in fields]
    return "\t".join([*clean, "[]", "[]"])


def generate_mind(
    folder: Path,
    n_users: int = 200,
    n_items: int = 300,
    n_impressions: int = 2000,
    negatives: int = 4,
    seed: int = 0,
) -> Path:
    """Write a learnable MIND-format news.tsv and behaviors.tsv into `folder`; return `folder`.

    Items fall into 8 topics (round robin), two subcategories each; a title is three words of its
    topic plus filler words (every 10th title quotes one word). Each user prefers 1 or 2 topics.
    About 1 user in 20 starts cold (empty history); the others start with 3-10 clicks, 90% from
    their topics. Each impression shows one clicked item from a preferred topic, not clicked
    before, and `negatives` other items (80% from the user's other topics, the rest from any
    topic), in shuffled order; the click is then appended to that user's history (the last 50
    are shown). Times increase by 1-120 s per impression. generator.json records the users'
    topics. Same arguments, same bytes.
    """
    if n_users < 1 or n_impressions < 1 or negatives < 0:
        raise ValueError("need n_users >= 1, n_impressions >= 1 and negatives >= 0")
    if n_items < max(len(TOPICS), negatives + 1):
        raise ValueError(f"need n_items >= max({len(TOPICS)}, negatives + 1), got {n_items}")
    folder = Path(folder)
    rng = random.Random(seed)
    topics = list(TOPICS)
    words = {t: TOPICS[t].split() for t in topics}

    items: list[NewsItem] = []
    by_topic: dict[str, list[str]] = {t: [] for t in topics}
    for i in range(n_items):
        topic = topics[i % len(topics)]
        title_words = rng.sample(words[topic], 3) + rng.sample(FILLERS, rng.randint(2, 4))
        rng.shuffle(title_words)
        if i % 10 == 9:
            title_words[0] = f'"{title_words[0]}"'
        abstract = rng.sample(words[topic], 4) + rng.sample(FILLERS, 4)
        rng.shuffle(abstract)
        item = NewsItem(
            item_id=f"N{i + 1}",
            category=topic,
            subcategory=f"{topic}_{'ab'[rng.randrange(2)]}",
            title=" ".join(title_words).capitalize(),
            abstract=" ".join(abstract).capitalize() + ".",
        )
        items.append(item)
        by_topic[topic].append(item.item_id)
    all_ids = [it.item_id for it in items]

    users = [f"U{u + 1}" for u in range(n_users)]
    rng.shuffle(users)  # the first users of this order are the cold ones, and come first
    n_cold = max(1, n_users // 20)
    prefers = {u: rng.sample(topics, rng.choice((1, 2))) for u in users}
    histories: dict[str, list[str]] = {}
    for k, u in enumerate(users):
        hist: list[str] = []
        if k >= n_cold:
            for _ in range(rng.randint(3, 10)):
                pool = by_topic[rng.choice(prefers[u])] if rng.random() < 0.9 else all_ids
                pick = rng.choice(pool)
                if pick not in hist:  # a history lists distinct clicks
                    hist.append(pick)
        histories[u] = hist

    impressions = []
    offset = 0
    for k in range(n_impressions):
        u = users[k] if k < n_users else rng.choice(users)
        hist = histories[u]
        liked = [i for t in prefers[u] for i in by_topic[t]]
        seen = set(hist)
        fresh = [i for i in liked if i not in seen]
        positive = rng.choice(fresh or liked)
        others = [i for t in topics if t not in prefers[u] for i in by_topic[t] if i not in seen]
        anywhere = [i for i in all_ids if i not in seen and i != positive]
        if len(anywhere) < negatives:  # a user who has clicked nearly everything
            others = [i for t in topics if t not in prefers[u] for i in by_topic[t]]
            anywhere = [i for i in all_ids if i != positive]
        chosen: set[str] = {positive}
        negs: list[str] = []
        while len(negs) < negatives:
            pool = others if others and rng.random() < 0.8 else anywhere
            cand = rng.choice(pool)
            if cand not in chosen:
                chosen.add(cand)
                negs.append(cand)
        shown = [(positive, 1)] + [(c, 0) for c in negs]
        rng.shuffle(shown)
        offset += rng.randint(1, 120)
        impressions.append(
            Impression(
                impression_id=str(k + 1),
                user_id=u,
                time=(START_TIME + timedelta(seconds=offset)).strftime("%Y-%m-%d %H:%M:%S"),
                history=tuple(hist[-50:]),
                candidates=tuple(c for c, _ in shown),
                labels=tuple(label for _, label in shown),
            )
        )
        hist.append(positive)

    write_lines_atomic(
        folder / "news.tsv",
        (format_news_line(it, f"https://example.invalid/news/{it.item_id}") for it in items),
    )
    write_lines_atomic(folder / "behaviors.tsv", (format_behavior_line(i) for i in impressions))
    meta = {
        "generator": "distill.data.mind.generate_mind",
        "args": {
            "n_users": n_users,
            "n_items": n_items,
            "n_impressions": n_impressions,
            "negatives": negatives,
            "seed": seed,
        },
        "user_topics": {u: prefers[u] for u in sorted(prefers, key=lambda u: int(u[1:]))},
        "cold_users": sorted(users[:n_cold], key=lambda u: int(u[1:])),
    }
    write_lines_atomic(folder / "generator.json", [json.dumps(meta, indent=1, sort_keys=False)])
    return folder
