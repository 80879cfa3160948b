"""Raw EHR tables in, `Visit` records out. `load_cohort` is the one entry point."""

from __future__ import annotations

from pathlib import Path

from distill.data.codes import assets_dir

# embedded demo sources: name -> (format, folder under assets/data)
SOURCES = {
    "mimic3-demo": ("mimic3", "mimic3_demo"),
    "mimic4-demo": ("mimic4", "mimic4_demo"),
    "synthea-demo": ("synthea", "synthea_demo"),
}
FORMATS = ("mimic3", "mimic4", "synthea")


def load_cohort(source: str | None = None, path: Path | None = None, fmt: str | None = None):
    """Read an embedded demo (`source`) or a user's export (`path` with `fmt`)."""
    from distill.data.tables import DataError

    if source is not None:
        if source not in SOURCES:
            raise DataError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        fmt, folder = SOURCES[source]
        path = assets_dir() / "data" / folder
    elif path is None or fmt is None:
        raise DataError("give either a source name or a path with its format")
    else:
        source = f"{fmt}:{Path(path).name}"
    if fmt == "mimic3":
        from distill.data.mimic import read_mimic3 as reader
    elif fmt == "mimic4":
        from distill.data.mimic import read_mimic4 as reader
    elif fmt == "synthea":
        from distill.data.synthea import read_synthea as reader
    else:
        raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    cohort = reader(Path(path), source=source)
    if not cohort.visits:
        raise DataError(f"{path}: no visits left after reading")
    return cohort
