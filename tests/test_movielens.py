"""MovieLens -> MIND conversion: a hand-made slice with known answers, then the shipped
ml-latest-small (assets/data/movielens_small) in full."""

from __future__ import annotations

import calendar
import json
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from distill.data.codes import assets_dir
from distill.data.mind import load_mind
from distill.data.movielens import movielens_to_mind
from distill.data.tables import DataError

SHIPPED = assets_dir() / "data" / "movielens_small"

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation
2,"Bourne Identity, The (2002)",Action|Thriller
3,Nothing (2000),(no genres listed)
4,Four (1990),Drama
5,Five (1991),Comedy
6,Six (1992),Drama|Comedy
7,Seven (1993),Horror
8,Eight (1994),Horror
9,Never Rated (1999),Drama
"""
# user 1: positives M1@100, M2@200, M4@200 (a tie), M6@300; M5 rated low
# user 2: positives M3@50, M7@60; by t=60 only M8, M3, M7 had been rated, all by user 2
# user 3: a single positive
RATINGS = """userId,movieId,rating,timestamp
1,1,5.0,100
1,2,4.0,200
1,4,4.5,200
1,5,2.0,250
1,6,4.0,300
2,3,4.0,50
2,7,5.0,60
2,8,1.0,70
2,1,3.0,80
3,8,4.0,10
3,2,3.0,400
"""


def _slice(folder: Path, movies: str = MOVIES, ratings: str = RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(movies, encoding="utf-8")
    (folder / "ratings.csv").write_text(ratings, encoding="utf-8")
    return folder


def _ts(canonical: str) -> int:
    return calendar.timegm(datetime.strptime(canonical, "%Y-%m-%d %H:%M:%S").timetuple())


def test_slice_known_answers(tmp_path):
    out = movielens_to_mind(_slice(tmp_path / "src"), tmp_path / "out", negatives=2)
    data = load_mind(out)
    assert len(data.items) == 9  # every movie, rated or not
    assert data.items["M2"].title == "Bourne Identity, The (2002)"
    assert (data.items["M2"].category, data.items["M2"].subcategory) == (
        "Action",
        "Action|Thriller",
    )
    assert data.items["M2"].abstract == "Action, Thriller"
    assert (data.items["M3"].category, data.items["M3"].abstract) == ("unknown", "")

    got = [
        (i.impression_id, i.user_id, i.time, i.history, i.candidates[i.labels.index(1)])
        for i in data.impressions
    ]
    assert got == [
        ("1", "U1", "1970-01-01 00:03:20", ("M1",), "M2"),
        ("2", "U1", "1970-01-01 00:03:20", ("M1",), "M4"),  # the tie M2 is not history
        ("3", "U1", "1970-01-01 00:05:00", ("M1", "M2", "M4"), "M6"),
    ]
    for imp in data.impressions:
        assert sorted(imp.labels) == [0, 0, 1]
        negatives = {c for c, label in zip(imp.candidates, imp.labels, strict=True) if not label}
        assert negatives <= {"M3", "M7", "M8"}  # rated by someone by then, never by user 1
    report = json.loads((out / "conversion.json").read_text())
    assert report["impressions"] == 3 and report["users"] == 1 and report["users_read"] == 3
    assert report["positives"] == 7 and report["ratings"] == 11 and report["items"] == 9
    assert report["skipped_no_earlier_positive"] == 3  # the first positive of each user
    assert report["skipped_too_few_unrated_movies"] == 1  # user 2 at t=60


def test_slice_options(tmp_path):
    src = _slice(tmp_path / "src")
    data = load_mind(movielens_to_mind(src, tmp_path / "a", negatives=2, time_aware=False))
    u2 = [i for i in data.impressions if i.user_id == "U2"]
    assert len(u2) == 1 and set(u2[0].candidates) - {"M7"} <= {"M2", "M4", "M5", "M6"}
    assert all("M9" not in i.candidates for i in data.impressions)  # rated by nobody

    data = load_mind(movielens_to_mind(src, tmp_path / "b", negatives=0, max_history=2))
    assert [i.history for i in data.impressions][-1] == ("M2", "M4")
    assert all(i.labels == (1,) for i in data.impressions)

    data = load_mind(movielens_to_mind(src, tmp_path / "c", negatives=1, max_users=1))
    assert {i.user_id for i in data.impressions} == {"U1"}

    out = movielens_to_mind(src, tmp_path / "d", negatives=1, min_rating=5.0)  # 1 positive each
    assert json.loads((out / "conversion.json").read_text())["impressions"] == 0
    assert (out / "behaviors.tsv").read_text() == ""
    with pytest.raises(DataError, match="no impressions left"):
        load_mind(out)


def test_slice_is_deterministic(tmp_path):
    src = _slice(tmp_path / "src")
    a = movielens_to_mind(src, tmp_path / "a", negatives=2, seed=5)
    b = movielens_to_mind(src, tmp_path / "b", negatives=2, seed=5)
    for name in ("news.tsv", "behaviors.tsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize(
    ("movies", "ratings", "expected"),
    [
        (MOVIES, RATINGS.replace("1,2,4.0,200", "1,2,four,200"), r"ratings\.csv: line 3: rating"),
        (MOVIES, RATINGS.replace("2,8,1.0,70", "2,8,1.0,"), r"ratings\.csv: line 9: timestamp"),
        (MOVIES, "userId,movieId,stars,timestamp\n1,1,5,1\n", r"ratings\.csv: missing column"),
        (MOVIES + "4,Again (2001),Drama\n", RATINGS, r"movies\.csv: line 11: duplicate movieId 4"),
        (MOVIES.replace("\n5,Five", "\nx5,Five"), RATINGS, r"movies\.csv: line 6: movieid"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, movies, ratings, expected):
    src = _slice(tmp_path / "src", movies, ratings)
    with pytest.raises(DataError, match=expected):
        movielens_to_mind(src, tmp_path / "out")


def test_shipped_assets_travel_with_their_licence():
    names = sorted(p.name for p in SHIPPED.iterdir())
    assert names == ["README.txt", "SOURCE.md", "movies.csv.gz", "ratings.csv.gz"]
    assert "redistribute" in (SHIPPED / "README.txt").read_text(encoding="utf-8")


def test_seed_changes_the_negatives(tmp_path):
    a = movielens_to_mind(SHIPPED, tmp_path / "a", seed=0, max_users=15)
    b = movielens_to_mind(SHIPPED, tmp_path / "b", seed=1, max_users=15)
    assert (a / "behaviors.tsv").read_bytes() != (b / "behaviors.tsv").read_bytes()
    assert len(load_mind(a).impressions) == len(load_mind(b).impressions)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml_mind")
    start = time.perf_counter()
    movielens_to_mind(SHIPPED, out)
    seconds = time.perf_counter() - start
    return out, seconds


def test_full_conversion_counts(full):
    out, seconds = full
    assert seconds < 10
    report = json.loads((out / "conversion.json").read_text())
    assert {k: report[k] for k in ("users", "users_read", "items", "impressions")} == {
        "users": 606,
        "users_read": 610,
        "items": 9742,
        "impressions": 47669,
    }
    assert report["ratings"] == 100836 and report["positives"] == 48580
    assert report["skipped_no_earlier_positive"] == 883
    assert report["skipped_too_few_unrated_movies"] == 28
    assert report["positives"] == (
        report["impressions"]
        + report["skipped_no_earlier_positive"]
        + report["skipped_too_few_unrated_movies"]
    )
    assert (out / "README.txt").read_bytes() == (SHIPPED / "README.txt").read_bytes()


def test_full_conversion_is_sound(full):
    """Checked against the ratings themselves: one click per impression, a click the user rated
    >= 4 at that time, a history of the user's earlier >= 4 ratings, negatives never rated by the
    user and already rated by someone."""
    out, _ = full
    data = load_mind(out)
    r = data.report
    assert r.impressions == 47669 and not r.skipped and r.unknown_history_ids == 0
    ratings = pd.read_csv(SHIPPED / "ratings.csv.gz")
    rated = {
        (f"U{u}", f"M{m}"): (x, t)
        for u, m, x, t in ratings[["userId", "movieId", "rating", "timestamp"]].itertuples(
            index=False
        )
    }
    first = {f"M{m}": t for m, t in ratings.groupby("movieId")["timestamp"].min().items()}
    previous = None
    for n, imp in enumerate(data.impressions, 1):
        assert imp.impression_id == str(n)
        assert previous is None or previous <= imp.time  # ids follow time
        previous = imp.time
        when = _ts(imp.time)
        assert imp.labels.count(1) == 1 and len(imp.candidates) == 5
        assert len(set(imp.candidates)) == 5
        for c, label in zip(imp.candidates, imp.labels, strict=True):
            if label:
                stars, t = rated[imp.user_id, c]
                assert stars >= 4.0 and t == when
            else:
                assert (imp.user_id, c) not in rated
                assert first[c] <= when
        assert 1 <= len(imp.history) <= 50
        seen = [rated[imp.user_id, h] for h in imp.history]
        assert all(x >= 4.0 and t < when for x, t in seen)
        assert [t for _, t in seen] == sorted(t for _, t in seen)  # oldest first
