"""Streaming CSV access with errors that name the file, the row and what was expected.

Every reader goes through `read_table`, which yields pandas chunks of string columns, so memory is
bounded by the chunk size and the columns asked for, not by the table (a full MIMIC-III
PRESCRIPTIONS has about 4 million rows). Column names are matched case-insensitively because
MIMIC-III exports exist with both upper- and lower-case headers.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

CHUNK_ROWS = 200_000
# no field of a clinical table is this long; one that is means a stray quote swallowed rows or
# the file is corrupt, and it must not become a code or fill a report
MAX_FIELD_CHARS = 10_000
# how exports spell a missing value (pandas writes "nan", databases "NULL"); compared lower-case
MISSING_VALUES = frozenset({"nan", "null", "none", "na", "n/a", "#n/a"})


class DataError(Exception):
    """Input that cannot be read as asked. The message names the file and what was expected."""


def find_table(folder: Path, name: str) -> Path:
    """Locate `name`.csv or `name`.csv.gz in `folder`, whatever the case of the file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory (expected the folder of a data export)")
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    hits = sorted(p for p in folder.iterdir() if p.name.lower() in wanted)
    if not hits:
        raise DataError(
            f"{folder}: missing table {name} (looked for {name}.csv or {name}.csv.gz, "
            "any letter case)"
        )
    return hits[0]


def open_bytes(path: Path):
    """`path` opened for reading bytes, gunzipped when its name ends in ".gz" (any case)."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_header(path: Path) -> list[str]:
    try:
        with open_bytes(path) as f:
            # decode the first line only: a bad byte further down is read_table's to report
            line = f.readline().decode("utf-8-sig")  # a BOM is not part of the name
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: header line is not UTF-8 text: {e.reason}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the header: {e}") from None
    if not line.strip():
        raise DataError(f"{path}: empty file (expected a CSV header line)")
    return next(csv.reader([line]))


def resolve_columns(path: Path, required: list[str], optional: list[str] = ()) -> dict[str, str]:
    """Map wanted (lower-case) names to the file's own column names; fail on missing ones."""
    header = read_header(path)
    by_lower = {h.strip().lower(): h for h in header}
    missing = [c for c in required if c not in by_lower]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(h.strip() for h in header)}"
        )
    return {c: by_lower[c] for c in [*required, *optional] if c in by_lower}


def read_table(
    path: Path,
    required: list[str],
    optional: list[str] = (),
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """Yield chunks with lower-case column names, every value a string ('' for empty).

    Each chunk carries `line` (the 1-based line number in the file, header = 1) so later checks
    can name the offending row.
    """
    cols = resolve_columns(path, required, optional)
    rename = {orig: low for low, orig in cols.items()}
    start = 2
    try:
        # no `usecols`: with it pandas silently drops the extra fields of a row that has too
        # many (a stray comma would shift values); columns are selected per chunk instead
        reader = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            chunksize=chunk_rows,
            encoding="utf-8",
            compression="gzip" if path.name.lower().endswith(".gz") else None,
        )
        for chunk in reader:
            chunk = chunk[list(cols.values())].rename(columns=rename)
            chunk["line"] = range(start, start + len(chunk))
            start += len(chunk)
            _check_field_sizes(chunk, path)
            yield chunk
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: unparsable row after line {start - 1}: {e}") from None
    except UnicodeDecodeError as e:
        # pandas decodes blocks of many lines, so it only knows the chunk; find the line itself
        raise DataError(
            _locate_damage(path) or f"{path}: not UTF-8 text near line {start}: {e.reason}"
        ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            _locate_damage(path) or f"{path}: truncated or corrupt gzip data near line {start}: {e}"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (expected a CSV header line)") from None


def _locate_damage(path: Path) -> str | None:
    """Re-read `path` line by line (only after an error, so the normal path reads once) and
    describe its first damage: a line that is not UTF-8, or where gzip data stops. None if the
    file reads cleanly this time."""
    n = 0  # complete lines read so far
    try:
        with open_bytes(path) as f:
            for raw in f:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"{path}: line {n + 1}: not UTF-8 text: {e.reason} at byte {e.start + 1}"
                if raw.endswith(b"\n"):
                    n += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        return f"{path}: truncated or corrupt gzip data after line {n} (the last complete one): {e}"
    except OSError:
        return None
    return None


def parse_times(
    chunk: pd.DataFrame, column: str, path: Path, allow_empty: bool = False
) -> pd.Series:
    """Parse a timestamp column to canonical 'YYYY-MM-DD HH:MM:SS' strings.

    Accepts MIMIC's '2164-10-23 21:09:00', Synthea's '2022-07-20T07:13:55Z' and bare dates. A
    value that is not a date is an error naming its line; empty values are '' when allowed.
    """
    values = chunk[column].str.strip()
    text = values.str.replace("T", " ", n=1, regex=False).str.slice(0, 19)
    text = text.where(text.str.len() != 10, text + " 00:00:00")
    parsed = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S", errors="coerce")
    bad = parsed.isna() & ((values != "") | (not allow_empty))
    if bad.any():
        i = bad.idxmax()
        raise DataError(
            f"{path}: line {chunk.at[i, 'line']}: column {column} is {values[i]!r}, "
            "expected a date such as 2164-10-23 21:09:00"
        )
    return parsed.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")


def _check_field_sizes(chunk: pd.DataFrame, path: Path) -> None:
    for column in chunk.columns.drop("line"):
        sizes = chunk[column].str.len()
        if len(sizes) and sizes.max() > MAX_FIELD_CHARS:
            i = sizes.idxmax()
            raise DataError(
                f"{path}: line {chunk.at[i, 'line']}: column {column} holds {sizes[i]:,} "
                f"characters (at most {MAX_FIELD_CHARS:,} expected: a stray quote or a corrupt "
                "file?)"
            )


def is_missing(values: pd.Series) -> pd.Series:
    """True where a (stripped) value is empty or a spelling of a missing value ("NaN")."""
    stripped = values.str.strip()
    return (stripped == "") | stripped.str.lower().isin(MISSING_VALUES)


def require_values(chunk: pd.DataFrame, column: str, path: Path) -> None:
    """Fail on an empty or missing ("NaN", "NULL") value in a key column, naming the first line
    that has one."""
    missing = is_missing(chunk[column])
    if missing.any():
        i = missing.idxmax()
        value = chunk.at[i, column].strip()
        what = f"empty {column}" if not value else f"{column} is {value!r}, a missing value"
        raise DataError(f"{path}: line {chunk.at[i, 'line']}: {what} (expected an id)")
