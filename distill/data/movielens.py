"""MovieLens ratings -> MIND-format news.tsv and behaviors.tsv (a redistributable stand-in).

MIND may not be redistributed; MovieLens ml-latest-small may (GroupLens licence, in
assets/data/movielens_small/README.txt, which must travel with the data and its
transformations). `movielens_to_mind` turns its timestamped ratings into click impressions:

- news.tsv: one row per movie of movies.csv. News id "M<movieId>", title = movie title,
  category = first genre, subcategory = all genres joined with "|", abstract = the genres as text
  ("Adventure, Animation, Children"). "(no genres listed)" becomes category and subcategory
  "unknown" and an empty abstract.
- behaviors.tsv: a user's positives are their ratings >= `min_rating`, in time order. A positive
  becomes an impression when the user has a positive with a strictly earlier timestamp (so the
  first positive, and positives tied with it, do not). Its history is the user's positives
  strictly before it in time (the last `max_history`, oldest first; MovieLens often gives many
  ratings the same second, and a tie is not "before"). Its candidates are the positive plus
  `negatives` movies the user never rated (at any time), drawn with a seeded generator and
  shuffled with the positive. User ids "U<userId>", the time is the rating's timestamp in UTC
  written as MIND writes times, impression ids count from 1 in time order.
- With `time_aware` (the default) negatives are drawn only from movies someone had rated by the
  impression's time. Titles carry the release year, so negatives from the whole catalogue would
  let a model spot a negative by a year after the impression. Where fewer than `negatives` such
  movies are left the impression is skipped and counted.
- conversion.json beside the two files records the arguments and the counts.

Ratings are read with pandas (`distill.data.tables.read_table`, errors name file and line);
the 100,836 ratings of ml-latest-small convert in about a second.
"""

from __future__ import annotations

import random
import shutil
from bisect import bisect_left
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from contract.files import atomic_write_json
from distill.data.mind import (
    NewsItem,
    format_behavior_line,
    format_news_line,
    write_lines_atomic,
)
from distill.data.records import Impression
from distill.data.tables import DataError, find_table, read_table

NO_GENRES = "(no genres listed)"


def _numbers(frame: pd.DataFrame, column: str, path: Path, integer: bool) -> np.ndarray:
    """The column as numbers, or a `DataError` naming the first line that is not a number."""
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna()
    if integer:
        bad |= values.notna() & (values != values.round())
    if bad.any():
        i = bad.idxmax()
        kind = "an integer" if integer else "a number"
        raise DataError(
            f"{path}: line {frame.at[i, 'line']}: {column} is {frame.at[i, column]!r}, "
            f"expected {kind}"
        )
    return values.to_numpy(dtype=np.int64 if integer else np.float64)


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    chunks = list(read_table(path, columns))
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    if frame.empty:
        raise DataError(f"{path}: no data rows (expected {', '.join(columns)} rows)")
    return frame


def _movies(path: Path) -> list[NewsItem]:
    frame = _read(path, ["movieid", "title", "genres"])
    ids = _numbers(frame, "movieid", path, integer=True)
    dup = pd.Series(ids).duplicated()
    if dup.any():
        i = int(dup.idxmax())
        raise DataError(
            f"{path}: line {frame.at[i, 'line']}: duplicate movieId {ids[i]}, expected each once"
        )
    items = []
    for movie_id, title, genres in zip(ids, frame["title"], frame["genres"], strict=True):
        names = [g.strip() for g in genres.split("|") if g.strip() and g.strip() != NO_GENRES]
        items.append(
            NewsItem(
                item_id=f"M{movie_id}",
                category=names[0] if names else "unknown",
                subcategory="|".join(names) if names else "unknown",
                title=title.strip(),
                abstract=", ".join(names),
            )
        )
    return sorted(items, key=lambda it: int(it.item_id[1:]))


def _ratings(path: Path, known: set[int], counts: Counter) -> pd.DataFrame:
    frame = _read(path, ["userid", "movieid", "rating", "timestamp"])
    out = pd.DataFrame(
        {
            "user": _numbers(frame, "userid", path, integer=True),
            "movie": _numbers(frame, "movieid", path, integer=True),
            "rating": _numbers(frame, "rating", path, integer=False),
            "ts": _numbers(frame, "timestamp", path, integer=True),
        }
    )
    counts["ratings"] = len(out)
    in_movies = out["movie"].isin(known)
    counts["ratings_of_unknown_movies"] = int((~in_movies).sum())
    out = out[in_movies].sort_values(["user", "ts", "movie"], kind="stable")
    dup = out.duplicated(["user", "movie"], keep="first")  # a re-rating: keep the first
    counts["duplicate_ratings"] = int(dup.sum())
    return out[~dup].reset_index(drop=True)


def movielens_to_mind(
    src_folder: Path,
    out_folder: Path,
    negatives: int = 4,
    min_rating: float = 4.0,
    max_history: int = 50,
    seed: int = 0,
    max_users: int | None = None,
    time_aware: bool = True,
) -> Path:
    """Convert a MovieLens folder (ratings.csv[.gz], movies.csv[.gz]) to MIND format in
    `out_folder`; return `out_folder`. `max_users` keeps the users with the smallest ids (for
    quick runs); negatives and item availability still come from every rating."""
    if negatives < 0 or max_history < 1:
        raise ValueError(
            f"need negatives >= 0 and max_history >= 1, got {negatives}, {max_history}"
        )
    src_folder, out_folder = Path(src_folder), Path(out_folder)
    counts: Counter = Counter(skipped_no_earlier_positive=0, skipped_too_few_unrated_movies=0)
    items = _movies(find_table(src_folder, "movies"))
    ratings = _ratings(
        find_table(src_folder, "ratings"), {int(it.item_id[1:]) for it in items}, counts
    )

    # the negative pool: rated movies, in the order someone first rated them
    first = ratings.groupby("movie", sort=True)["ts"].min().reset_index()
    first = first.sort_values(["ts", "movie"], kind="stable").reset_index(drop=True)
    pool_movies = first["movie"].to_numpy()
    pool_times = first["ts"].to_numpy()
    pool_names = [f"M{m}" for m in pool_movies.tolist()]
    position = pd.Series(np.arange(len(first)), index=pool_movies)
    ratings["pos"] = position.reindex(ratings["movie"].to_numpy()).to_numpy()

    users = np.sort(ratings["user"].unique())
    if max_users is not None:
        users = users[:max_users]
    rated_by = {u: np.sort(g.to_numpy()) for u, g in ratings.groupby("user", sort=True)["pos"]}
    positives = ratings[(ratings["rating"] >= min_rating) & ratings["user"].isin(users)]
    times = pd.to_datetime(positives["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")
    positives = positives.assign(time=times.to_numpy())
    counts["positives"] = len(positives)

    rng = random.Random(seed)
    rows: list[tuple[int, int, int, Impression]] = []
    for user, group in positives.groupby("user", sort=True):
        ts = group["ts"].tolist()
        movies = group["movie"].tolist()
        names = [f"M{m}" for m in movies]
        when = group["time"].tolist()
        rated_sorted = rated_by[user]
        rated = set(rated_sorted.tolist())
        for j in range(len(group)):
            earlier = bisect_left(ts, ts[j])  # positives strictly before this one
            if earlier == 0:
                counts["skipped_no_earlier_positive"] += 1
                continue
            k = (
                int(np.searchsorted(pool_times, ts[j], side="right"))
                if time_aware
                else len(pool_movies)
            )
            free = k - int(np.searchsorted(rated_sorted, k, side="left"))
            if free < negatives:
                counts["skipped_too_few_unrated_movies"] += 1
                continue
            if free * 2 < k:  # mostly rated: list the free ones
                picks = rng.sample([p for p in range(k) if p not in rated], negatives)
            else:
                chosen: set[int] = set()
                picks = []
                while len(picks) < negatives:
                    p = rng.randrange(k)
                    if p not in rated and p not in chosen:
                        chosen.add(p)
                        picks.append(p)
            shown = [(names[j], 1)] + [(pool_names[p], 0) for p in picks]
            rng.shuffle(shown)
            history = tuple(names[max(0, earlier - max_history) : earlier])
            imp = Impression(
                impression_id="",
                user_id=f"U{user}",
                time=when[j],
                history=history,
                candidates=tuple(c for c, _ in shown),
                labels=tuple(label for _, label in shown),
            )
            rows.append((ts[j], int(user), movies[j], imp))

    rows.sort(key=lambda r: r[:3])
    impressions = [
        Impression(str(n), imp.user_id, imp.time, imp.history, imp.candidates, imp.labels)
        for n, (*_, imp) in enumerate(rows, 1)
    ]
    write_lines_atomic(out_folder / "news.tsv", (format_news_line(it) for it in items))
    write_lines_atomic(out_folder / "behaviors.tsv", (format_behavior_line(i) for i in impressions))

    used = {c for i in impressions for c in i.candidates} | {
        h for i in impressions for h in i.history
    }
    report = {
        "source": str(src_folder),
        "args": {
            "negatives": negatives,
            "min_rating": min_rating,
            "max_history": max_history,
            "seed": seed,
            "max_users": max_users,
            "time_aware": time_aware,
        },
        "users": len({i.user_id for i in impressions}),
        "users_read": int(len(users)),
        "items": len(items),
        "items_in_impressions": len(used),
        "impressions": len(impressions),
        **{k: int(v) for k, v in sorted(counts.items())},
    }
    atomic_write_json(out_folder / "conversion.json", report)
    licence = src_folder / "README.txt"  # the GroupLens licence goes with transformations too
    if licence.is_file():
        shutil.copyfile(licence, out_folder / "README.txt")
    return out_folder


DEMO_SOURCE = "movielens-demo"


def demo_mind(out_folder: Path) -> Path:
    """The embedded news demo: the shipped MovieLens small converted to MIND format in
    `out_folder` with the default settings. Deterministic (seeded), so an export can rebuild
    the exact impressions a `movielens-demo` run read instead of keeping a copy of them."""
    from distill.data.codes import assets_dir

    return movielens_to_mind(assets_dir() / "data" / "movielens_small", Path(out_folder))
