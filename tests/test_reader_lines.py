"""A damaged CSV names the line that is damaged, not the start of the chunk pandas was reading.

Files are generated here (a bad byte on a known line, plain and gzip; a gzip cut short) and read
through `read_table` and through each EHR reader that shares it (MIMIC-III, MIMIC-IV, Synthea).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import zlib
from pathlib import Path

import pytest

from distill.data import load_cohort
from distill.data.tables import DataError, read_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "assets" / "data"


def table_lines(n_rows: int) -> list[bytes]:
    """A header and `n_rows` rows of hex that gzip cannot squeeze much, so a cut file stops
    mid-way through the rows."""
    rows = [f"{i},{hashlib.sha256(str(i).encode()).hexdigest()}\n".encode() for i in range(n_rows)]
    return [b"subject_id,note\n", *rows]


def write(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def spoil(lines: list[bytes], line: int, bad: bytes) -> list[bytes]:
    """Put `bad` into 1-based `line`, after its first field."""
    lines = list(lines)
    head, rest = lines[line - 1].split(b",", 1)
    lines[line - 1] = head + b"," + bad + rest
    return lines


def read_all(path: Path, chunk_rows: int = 200_000) -> None:
    for _ in read_table(path, ["subject_id", "note"], chunk_rows=chunk_rows):
        pass


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
@pytest.mark.parametrize("bad", [b"\xff", "\u00e9".encode("latin-1")])
@pytest.mark.parametrize("line", [3, 1234, 3000])
def test_bad_byte_names_its_line(tmp_path, name, bad, line):
    path = write(tmp_path / name, spoil(table_lines(4000), line, bad))
    with pytest.raises(DataError, match=rf"{re.escape(name)}: line {line}: not UTF-8 text"):
        read_all(path)


def test_bad_byte_in_a_later_chunk_names_its_line(tmp_path):
    path = write(tmp_path / "t.csv.gz", spoil(table_lines(300), 257, b"\xff"))
    with pytest.raises(DataError, match=r"line 257: not UTF-8 text: invalid start byte"):
        read_all(path, chunk_rows=50)


def test_utf8_bom_and_multibyte_text_still_read(tmp_path):
    lines = table_lines(50)
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    path = write(tmp_path / "t.csv.gz", spoil(lines, 40, "\u00e9\u00e8".encode()))
    assert sum(len(c) for c in read_table(path, ["subject_id", "note"])) == 50


@pytest.mark.parametrize("chunk_rows", [200_000, 100])
def test_truncated_gzip_names_the_last_complete_line(tmp_path, chunk_rows):
    full = gzip.compress(b"".join(table_lines(4000)))
    cut = full[: len(full) // 2]
    # what any gzip reader can recover from the cut file, counted without the code under test
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    last = readable.count(b"\n")
    assert 100 < last < 4000
    path = tmp_path / "t.csv.gz"
    path.write_bytes(cut)
    with pytest.raises(DataError, match=rf"truncated or corrupt gzip data after line {last} "):
        read_all(path, chunk_rows)


# the same through the readers: one demo table of each format, broken on a known line


READERS = {
    "mimic3": (DATA / "mimic3_demo", "PRESCRIPTIONS.csv.gz"),
    "mimic4": (DATA / "mimic4_demo" / "hosp", "prescriptions.csv.gz"),
    "synthea": (DATA / "synthea_demo", "medications.csv.gz"),
}


def broken_copy(tmp_path: Path, fmt: str) -> tuple[Path, Path, list[bytes]]:
    src, name = READERS[fmt]
    folder = tmp_path / fmt
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.txt", "*.md"))
    table = folder / name
    lines = gzip.decompress(table.read_bytes()).splitlines(keepends=True)
    return folder, table, lines


@pytest.mark.parametrize("fmt", sorted(READERS))
@pytest.mark.parametrize("plain", [False, True])
def test_each_reader_names_the_bad_line(tmp_path, fmt, plain):
    folder, table, lines = broken_copy(tmp_path, fmt)
    if plain:
        table.unlink()
        table = table.with_suffix("")  # x.csv.gz -> x.csv
    write(table, spoil(lines, 2001, b"\xff"))
    with pytest.raises(DataError, match=rf"{re.escape(table.name)}: line 2001: not UTF-8"):
        load_cohort(path=folder, fmt=fmt)


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_each_reader_names_the_last_line_of_a_cut_gzip(tmp_path, fmt):
    folder, table, _ = broken_copy(tmp_path, fmt)
    cut = table.read_bytes()[: table.stat().st_size // 2]
    last = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n")
    table.write_bytes(cut)
    expected = rf"{re.escape(table.name)}: truncated or corrupt gzip data after line {last} "
    with pytest.raises(DataError, match=expected):
        load_cohort(path=folder, fmt=fmt)
