"""MIND reader, time split and generator. MIND itself is never used: every file here is either
written by `generate_mind` or by hand in a temporary folder."""

from __future__ import annotations

import gzip
import random
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.data.mind import (
    UNLABELED,
    NewsItem,
    format_behavior_line,
    format_mind_time,
    generate_mind,
    load_mind,
    parse_behavior_line,
    parse_mind_time,
    read_behaviors,
    read_news,
    time_split,
)
from distill.data.records import Impression
from distill.data.tables import DataError

NEWS = (
    'N1\tsports\tfootball\tCoach says "we\'ll win" again\tAn abstract.\thttps://x/1\t[]\t[]\n'
    "N2\tfinance\tmarkets\tStocks fall\t\thttps://x/2\t\t\n"
    "N3\tfood\trecipes\tPasta 'al dente'\tShort one\n"
)
BEHAVIORS = (
    "1\tU1\t11/11/2019 9:05:58 AM\t\tN1-1 N2-0\n"
    "2\tU2\t11/12/2019 12:00:01 PM\tN3 N1\tN2-0 N3-0 N1-1\n"
    "3\tU1\t11/13/2019 12:15:00 AM\tN1\tN3-1\n"
)


def _write(folder: Path, news: str = NEWS, behaviors: str = BEHAVIORS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text(news, encoding="utf-8")
    (folder / "behaviors.tsv").write_text(behaviors, encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------- generated data


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_mind(tmp_path_factory.mktemp("mind"))


def test_generated_round_trip(generated):
    data = load_mind(generated)
    assert len(data.items) == 300 and len(data.impressions) == 2000
    r = data.report
    assert (r.news_rows, r.behavior_rows, r.impressions) == (300, 2000, 2000)
    assert r.unknown_history_ids == 0 and r.unknown_candidate_ids == 0 and not r.skipped
    assert r.empty_histories == 10  # 1 user in 20 starts cold
    assert len({i.user_id for i in data.impressions}) == 200
    assert len({it.category for it in data.items.values()}) == 8
    assert any('"' in it.title for it in data.items.values())  # quotes survive
    for imp in data.impressions:
        assert len(imp.candidates) == 5 == len(set(imp.candidates))
        assert sorted(imp.labels) == [0, 0, 0, 0, 1]  # exactly one click
        assert set(imp.history) <= set(data.items)
        assert len(set(imp.history)) == len(imp.history)


def test_generated_histories_are_past_clicks_oldest_first(generated):
    data = load_mind(generated)
    times = [i.time for i in data.impressions]
    assert times == sorted(times) and len(set(times)) == len(times)  # times increase
    last: dict[str, Impression] = {}
    for imp in data.impressions:
        before = last.get(imp.user_id)
        if before is not None:
            clicked = before.candidates[before.labels.index(1)]
            assert imp.history == (*before.history, clicked)[-50:]
        last[imp.user_id] = imp


def test_generated_data_is_learnable(generated):
    """Scoring a candidate by how many history items share its topic beats chance (1 in 5)."""
    data = load_mind(generated)
    hits = n = 0
    for imp in data.impressions:
        if not imp.history:
            continue
        topics = [data.items[h].category for h in imp.history]
        scores = [topics.count(data.items[c].category) for c in imp.candidates]
        best = max(range(len(scores)), key=lambda j: (scores[j], -j))
        hits += imp.labels[best] == 1
        n += 1
    assert hits / n > 0.6


def test_generator_is_deterministic(tmp_path):
    a = generate_mind(tmp_path / "a", n_users=20, n_items=40, n_impressions=100, seed=3)
    b = generate_mind(tmp_path / "b", n_users=20, n_items=40, n_impressions=100, seed=3)
    c = generate_mind(tmp_path / "c", n_users=20, n_items=40, n_impressions=100, seed=4)
    for name in ("news.tsv", "behaviors.tsv", "generator.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "behaviors.tsv").read_bytes() != (c / "behaviors.tsv").read_bytes()


def test_generator_arguments(tmp_path):
    data = load_mind(generate_mind(tmp_path, n_users=5, n_items=9, n_impressions=40, negatives=8))
    assert all(sorted(i.candidates) == sorted(data.items) for i in data.impressions)
    with pytest.raises(ValueError, match="n_items"):
        generate_mind(tmp_path / "x", n_items=4)


# ------------------------------------------------------------------------------ hand-written


def test_hand_written_files(tmp_path):
    data = load_mind(_write(tmp_path))
    assert data.items["N1"] == NewsItem(
        "N1", "sports", "football", 'Coach says "we\'ll win" again', "An abstract."
    )
    assert data.items["N2"].abstract == ""
    assert data.items["N3"].title == "Pasta 'al dente'"  # a 5-field row
    assert data.impressions == [
        Impression("1", "U1", "2019-11-11 09:05:58", (), ("N1", "N2"), (1, 0)),
        Impression("2", "U2", "2019-11-12 12:00:01", ("N3", "N1"), ("N2", "N3", "N1"), (0, 0, 1)),
        Impression("3", "U1", "2019-11-13 00:15:00", ("N1",), ("N3",), (1,)),
    ]
    assert data.report.empty_histories == 1


def test_crlf_blank_lines_bom_and_gzip(tmp_path):
    body = "\ufeff" + BEHAVIORS.replace("\n", "\r\n") + "\r\n"
    _write(tmp_path, behaviors=body)
    with gzip.open(tmp_path / "news.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(NEWS)
    (tmp_path / "news.tsv").unlink()
    data = load_mind(tmp_path)
    assert [i.impression_id for i in data.impressions] == ["1", "2", "3"]
    assert data.report.blank_lines == 1 and data.report.news_file.endswith("news.tsv.gz")


def test_unknown_history_ids_are_dropped_and_counted(tmp_path):
    behaviors = "1\tU1\t11/11/2019 9:05:58 AM\tN9 N1 N8 N9\tN1-1 N2-0\n"
    data = load_mind(_write(tmp_path, behaviors=behaviors))
    assert data.impressions[0].history == ("N1",)
    r = data.report
    assert r.unknown_history_ids == 3 and r.impressions_with_unknown_history == 1
    assert r.unknown_examples == {"N9": 2, "N8": 1}


def test_unknown_candidates_skip_the_impression(tmp_path):
    behaviors = BEHAVIORS + "4\tU3\t11/14/2019 1:00:00 PM\tN1\tN1-0 N7-1\n"
    data = load_mind(_write(tmp_path, behaviors=behaviors))
    assert [i.impression_id for i in data.impressions] == ["1", "2", "3"]
    assert data.report.skipped == {"candidate not in news.tsv": 1}
    assert data.report.unknown_candidate_ids == 1 and data.report.behavior_rows == 4


def test_unknown_candidates_can_be_dropped_instead_and_are_counted(tmp_path):
    behaviors = BEHAVIORS + (
        "4\tU3\t11/14/2019 1:00:00 PM\tN1 N8\tN1-1 N7-0 N9-0\n"  # unknown negatives
        "5\tU3\t11/15/2019 1:00:00 PM\tN1\tN2-0 N7-1\n"  # its only click unknown
        "6\tU3\t11/16/2019 1:00:00 PM\tN1\tN7-1 N9-0\n"  # no candidate known
        "7\tU4\t11/17/2019 1:00:00 PM\t\tN3-1 N7-1 N2-0\n"  # one of two clicks unknown
    )
    data = load_mind(_write(tmp_path, behaviors=behaviors), unknown_candidates="drop")
    kept = {i.impression_id: i for i in data.impressions}
    assert sorted(kept) == ["1", "2", "3", "4", "7"]
    assert kept["4"].candidates == ("N1",) and kept["4"].labels == (1,)
    assert kept["4"].history == ("N1",)  # unknown history ids are dropped as always
    assert kept["7"].candidates == ("N3", "N2") and kept["7"].labels == (1, 0)
    r = data.report
    assert r.unknown_candidates == "drop"
    assert r.unknown_candidate_ids == 2 + 1 + 2 + 1
    assert r.dropped_candidate_ids == 3 and r.dropped_clicks == 1
    assert r.impressions_with_dropped_candidates == 2
    # impression 4 kept only its click (as 3 was written): counted, as the ranking metrics
    # cannot score such an impression
    assert r.impressions_without_negative == 2
    assert "2 kept impressions with no unclicked candidate" in r.summary()
    assert r.skipped == {
        "every clicked candidate not in news.tsv": 1,
        "no candidate in news.tsv": 1,
    }
    d = r.as_dict()
    assert d["dropped_candidate_ids"] == 3 and d["unknown_candidates"] == "drop"
    assert "3 unknown candidates dropped (1 clicked) from 2 impressions" in r.summary()
    with pytest.raises(ValueError, match="unknown_candidates must be one of skip, drop"):
        load_mind(tmp_path, unknown_candidates="keep")


def test_no_impression_left_prints_the_counts_and_the_way_out(tmp_path):
    """A news.tsv lacking rows for many ids (as a public MINDsmall sample does)."""
    folder = generate_mind(tmp_path / "mind", n_users=20, n_items=60, n_impressions=200)
    news = (folder / "news.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "news.tsv").write_text("".join(news[::3]), encoding="utf-8")  # 2 in 3 rows gone
    with pytest.raises(DataError) as err:
        load_mind(folder)
    msg = str(err.value)
    assert "no impressions left after reading (20 news rows; 200 impressions read; 0 kept" in msg
    assert "skipped: 200 candidate not in news.tsv" in msg
    assert "candidate ids not in news.tsv" in msg and "unknown ids e.g. N" in msg
    assert "--mind-unknown drop" in msg
    data = load_mind(folder, unknown_candidates="drop")
    r = data.report
    assert 0 < r.impressions == len(data.impressions) < 200
    assert r.impressions + sum(r.skipped.values()) == 200
    assert r.dropped_candidate_ids > 0
    known = {line.split("\t")[0] for line in news[::3]}
    for imp in data.impressions:
        assert set(imp.candidates) <= known and set(imp.history) <= known
        assert 1 in imp.labels


def test_no_impression_left_with_drop_names_no_drop_hint(tmp_path):
    """The way out ("pass --mind-unknown drop") is offered only to a reader that skipped."""
    behaviors = "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN7-1 N9-0\n"  # no candidate known
    _write(tmp_path, behaviors=behaviors)
    with pytest.raises(DataError) as err:
        load_mind(tmp_path, unknown_candidates="drop")
    assert "skipped: 1 no candidate in news.tsv" in str(err.value)
    assert "--mind-unknown" not in str(err.value)
    with pytest.raises(DataError, match="pass --mind-unknown drop"):
        load_mind(tmp_path)


def test_identical_news_rows_repeated_are_counted_not_refused(tmp_path):
    """MINDsmall's train and dev news.tsv share most rows: joined, each shared id comes twice,
    identically. Those repeats are skipped and counted; a repeat that differs stays an error."""
    twice = NEWS + NEWS.splitlines(keepends=True)[0] + NEWS.splitlines(keepends=True)[2]
    data = load_mind(_write(tmp_path, news=twice))
    assert data.report.news_rows == len(NEWS.splitlines()) and data.report.repeated_news_rows == 2
    assert "(2 identical repeats skipped)" in data.report.summary()
    assert data.report.as_dict()["repeated_news_rows"] == 2


def test_unlabeled_impressions_are_opt_in(tmp_path):
    behaviors = "1\tU1\t11/11/2019 9:05:58 AM\tN3\tN1 N2\n"
    _write(tmp_path, behaviors=behaviors)
    with pytest.raises(DataError, match=r"behaviors\.tsv: line 1: .*allow_unlabeled=True"):
        load_mind(tmp_path)
    data = load_mind(tmp_path, allow_unlabeled=True)
    assert data.impressions[0].labels == (UNLABELED, UNLABELED)
    assert data.report.unlabeled_impressions == 1


def test_impression_without_click_is_kept_and_counted(tmp_path):
    data = load_mind(_write(tmp_path, behaviors="1\tU1\t11/11/2019 9:05:58 AM\t\tN1-0 N2-0\n"))
    assert data.impressions[0].labels == (0, 0)
    assert data.report.impressions_without_click == 1


GOOD_ROW = "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-1 N2-0\n"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\n", "4 tab-separated fields, expected 5"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-1\tx\n", "6 tab-separated fields, expected 5"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-2 N2-0\n", "'N1-2', expected id-label"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-yes\n", "'N1-yes', expected id-label"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\t-1\n", "'-1', expected id-label"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\tN1 N2-0\n", "'N1' has no label"),
        ("2\tU1\t2019-11-11 09:05:58\tN1\tN1-1\n", "expected a time such as"),
        ("2\tU1\t13/11/2019 9:05:58 AM\tN1\tN1-1\n", "expected a time such as"),
        ("2\tU1\t11/11/2019 13:05:58 PM\tN1\tN1-1\n", "expected a time such as"),
        ("2\tU1\t11/11/2019 9:05:58 AM\tN1\t \n", "no impressions"),
        ("2\t\t11/11/2019 9:05:58 AM\tN1\tN1-1\n", "user id is '', expected a non-empty id"),
        ("1\tU2\t11/11/2019 9:05:58 AM\tN1\tN1-1\n", "duplicate impression id 1 .first on line 1"),
    ],
)
def test_malformed_behaviors_name_file_and_line(tmp_path, row, expected):
    _write(tmp_path, behaviors=GOOD_ROW + row)
    with pytest.raises(DataError, match=rf"behaviors\.tsv: line 2: .*{expected}"):
        load_mind(tmp_path)


def test_mixed_labels_are_an_error_even_when_unlabeled_is_allowed(tmp_path):
    _write(tmp_path, behaviors=GOOD_ROW + "2\tU1\t11/11/2019 9:05:58 AM\t\tN1 N2-0\n")
    with pytest.raises(DataError, match=r"behaviors\.tsv: line 2: labeled and unlabeled"):
        load_mind(tmp_path, allow_unlabeled=True)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("N1\tsports\tfootball\tA title\n", "line 1: 4 tab-separated fields, expected 5 to 8"),
        ("N1\ta\tb\tc\td\te\tf\tg\th\n", "line 1: 9 tab-separated fields, expected 5 to 8"),
        ("N1\ta\tb\tT\tA\nN2\ta\tb\tT\tA\nN1\ta\tb\tT2\tA\n", "line 3: news id N1 again .first"),
        ("\ta\tb\tT\tA\n", "line 1: news id is '', expected an id"),
        ("", "no news rows"),
    ],
)
def test_malformed_news_names_file_and_line(tmp_path, rows, expected):
    _write(tmp_path, news=rows)
    with pytest.raises(DataError, match=rf"news\.tsv: {expected}"):
        load_mind(tmp_path)


def test_non_utf8_line_is_named(tmp_path):
    _write(tmp_path)
    (tmp_path / "news.tsv").write_bytes(NEWS.encode() + b"N4\ta\tb\t\xff\tx\n")
    with pytest.raises(DataError, match=r"news\.tsv: line 4: not UTF-8"):
        load_mind(tmp_path)


def test_split_layout(tmp_path):
    _write(tmp_path / "train")
    _write(tmp_path / "dev", behaviors=GOOD_ROW)
    assert len(load_mind(tmp_path, split="train").impressions) == 3
    assert len(load_mind(tmp_path, split="dev").impressions) == 1
    advice = f"pass --path {tmp_path / 'dev'} or --path {tmp_path / 'train'}"
    with pytest.raises(DataError, match=re.escape(advice) + "$"):
        load_mind(tmp_path)
    with pytest.raises(DataError, match=r"no test/ subfolder \(found: dev, train\)"):
        load_mind(tmp_path, split="test")
    (tmp_path / "dev" / "behaviors.tsv").unlink()
    with pytest.raises(DataError, match=r"dev: missing behaviors\.tsv"):
        load_mind(tmp_path, split="dev")


def test_split_layout_advice_is_a_command_line_that_works(tmp_path, capsys):
    """The CLI has no --split: the error names the subfolder to give as --path, and only
    subfolders that hold MIND files."""
    from pocketrec.cli import main

    _write(tmp_path / "mind_split" / "train")
    (tmp_path / "mind_split" / "notes").mkdir()
    out = tmp_path / "n2"
    args = ["distill", "--domain", "news", "--format", "mind", "--out", str(out), "--quick"]
    assert main([*args, "--path", str(tmp_path / "mind_split")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    advised = tmp_path / "mind_split" / "train"
    assert err.endswith(f"split subfolders: pass --path {advised}"), err
    assert "split=" not in err and not out.exists()
    assert len(load_mind(advised).impressions) == 3


def test_readers_stream(tmp_path):
    _write(tmp_path)
    items = read_news(tmp_path / "news.tsv")
    it = read_behaviors(tmp_path / "behaviors.tsv", items)
    assert next(it).impression_id == "1"  # an iterator, read lazily


# ----------------------------------------------------------------------------------- split


def test_time_split_orders_and_shares(generated):
    impressions = load_mind(generated).impressions
    shuffled = impressions[:]
    random.Random(1).shuffle(shuffled)
    train, val, test = time_split(shuffled)
    assert (len(train), len(val), len(test)) == (1400, 200, 400)
    assert max(i.time for i in train) <= min(i.time for i in val)
    assert max(i.time for i in val) <= min(i.time for i in test)
    assert train + val + test == sorted(impressions, key=lambda i: (i.time, i.impression_id))
    assert time_split(impressions) == (train, val, test)  # input order does not matter
    assert time_split(impressions, 0.0, 0.5)[1] == []
    with pytest.raises(ValueError, match="shares"):
        time_split(impressions, 0.5, 0.5)
    assert time_split([]) == ([], [], [])


# ------------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("mind", "canonical"),
    [
        ("11/11/2019 9:05:58 AM", "2019-11-11 09:05:58"),
        ("1/2/2020 12:00:00 AM", "2020-01-02 00:00:00"),
        ("1/2/2020 12:30:00 PM", "2020-01-02 12:30:00"),
        ("12/31/2019 11:59:59 PM", "2019-12-31 23:59:59"),
    ],
)
def test_time_spellings(mind, canonical):
    assert parse_mind_time(mind) == canonical
    assert format_mind_time(canonical) == mind


ids = st.from_regex(r"[NM][0-9]{1,6}", fullmatch=True)
times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2040, 12, 31)).map(
    lambda t: t.strftime("%Y-%m-%d %H:%M:%S")
)


@st.composite
def impressions(draw, unlabeled: bool = False) -> Impression:
    candidates = draw(st.lists(ids, min_size=1, max_size=8))
    label = st.just(UNLABELED) if unlabeled else st.sampled_from([0, 1])
    return Impression(
        impression_id=draw(st.from_regex(r"[0-9]{1,7}", fullmatch=True)),
        user_id=draw(st.from_regex(r"U[0-9A-Za-z_]{1,8}", fullmatch=True)),
        time=draw(times),
        history=tuple(draw(st.lists(ids, max_size=12))),
        candidates=tuple(candidates),
        labels=tuple(draw(label) for _ in candidates),
    )


@given(imp=st.one_of(impressions(), impressions(unlabeled=True)))
def test_behavior_line_round_trip(imp):
    line = format_behavior_line(imp)
    assert "\n" not in line and line.count("\t") == 4
    assert parse_behavior_line(line, allow_unlabeled=True) == imp


@settings(max_examples=30)
@given(rows=st.lists(impressions(), min_size=1, max_size=20, unique_by=lambda i: i.impression_id))
def test_behaviors_file_round_trip(rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "behaviors.tsv"
        path.write_text("".join(format_behavior_line(i) + "\n" for i in rows), encoding="utf-8")
        assert list(read_behaviors(path)) == rows


# ------------------------------------------------------------------- through the command line


def _cli(*args: str):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", *args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
    )


def test_too_few_impressions_to_split_is_an_error_with_the_counts(tmp_path):
    """Two impressions survive the reader: no test split. Said with the reader's counts and
    the way out, exit 2, no traceback, and no half-made run folder left behind."""
    behaviors = (
        "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN1-1 N2-0\n"
        "2\tU2\t11/11/2019 9:06:58 AM\t\tN2-1 N8-0\n"  # N8 unknown: skipped
        "3\tU2\t11/11/2019 9:07:58 AM\t\tN3-1 N1-0\n"
    )
    folder = _write(tmp_path / "mind", behaviors=behaviors)
    out = tmp_path / "run"
    done = _cli("distill", "--domain", "news", "--path", str(folder), "--format", "mind",
                "--quick", "--out", str(out))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "too few impressions (2) to split into training and test by time" in done.stderr
    assert "3 impressions read; 2 kept; skipped: 1 candidate not in news.tsv" in done.stderr
    assert "pass --mind-unknown drop" in done.stderr
    assert not out.exists()  # the corrected command needs no --force


def test_the_cli_hands_mind_unknown_to_the_news_run(tmp_path, monkeypatch):
    from distill.news import run as news_run
    from pocketrec.cli import main

    asked = []

    def fake_run_news(out, data, **kwargs):
        asked.append(kwargs["unknown_candidates"])
        raise DataError("stop here")  # what the run does is tested elsewhere

    monkeypatch.setattr(news_run, "run_news", fake_run_news)
    folder = _write(tmp_path / "mind")
    base = ["distill", "--domain", "news", "--path", str(folder), "--format", "mind"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    assert main([*base, "--out", str(tmp_path / "b"), "--mind-unknown", "drop"]) == 2
    assert asked == ["skip", "drop"]


def test_mind_unknown_is_refused_for_a_medication_run(tmp_path, capsys):
    from pocketrec.cli import main

    out = tmp_path / "run"
    args = ["distill", "--source", "mimic4-demo", "--out", str(out), "--mind-unknown", "drop"]
    assert main(args) == 2
    assert "--mind-unknown applies to news runs" in capsys.readouterr().err
    assert not out.exists()


def test_report_states_dropped_history_items_alone():
    """report.md's "Data as read" line appears when only history items were dropped, and
    not when the reader dropped and skipped nothing."""
    from distill.news.evaluate import data_lines

    data = {"behavior_rows": 10, "impressions": 10, "skipped": {}, "unknown_history_ids": 7,
            "impressions_with_unknown_history": 3, "unknown_candidates": "drop"}  # fmt: skip
    (line, _) = data_lines({"data_report": data})
    assert line.startswith("Data as read (MIND reader, unknown candidates: `drop`)")
    assert "7 history ids not in news.tsv dropped from 3 histories" in line
    clean = data | {"unknown_history_ids": 0}
    assert data_lines({"data_report": clean}) == []
    (line, _) = data_lines({"data_report": clean | {"impressions_without_negative": 1}})
    assert "1 kept impressions with no unclicked candidate" in line
