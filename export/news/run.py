"""A finished news run -> two int8 ONNX graphs + the tokenizer as data -> a news bundle.

`export_news_run(run_dir, out_dir)` takes the KD student of a `distill.news.run.run_news` folder
and writes the directory the app reads as a news bundle (`export.news.bundle`). It reads the
run folder only: the student, its piece vocabulary, and the catalog, catalog tokens, test
impressions and catalog activity the run kept for it (`distill.news.export_inputs`); the teacher
tokenizer that `pieces.json` describes is loaded by the backbone name the run's config keeps,
and checked to be the one the run used (`distill.news.pieces.tokenizer_fingerprint`).

Both graphs (`export.news.graphs`) are quantized with `export.quantize.quantize` (dynamic int8,
a named preset) and must pass the parity gates of `export.news.parity`; nothing is written
when one fails. The export leaves the run folder as it is: its results go into the bundle's
manifest and into ``<out_dir>.export.json`` beside the bundle; `write_pipeline_report` puts the
run's report and the export's results together for `pocketrec pipeline`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.bundle import BUNDLE_FORMAT, CATALOG_FILE, ITEM_FILE, PIECES_FILE, USER_FILE
from contract.files import atomic_write_json, atomic_write_text
from distill.news.export_inputs import ExportInputs, read_export_inputs
from distill.news.pieces import TEXT_TEMPLATE
from export.news.bundle import (
    catalog_document,
    cold_start_settings,
    write_bundle,
)
from export.news.parity import TOP_K
from export.onnx import ExportError, model_entry

__all__ = [
    "DOMAIN",
    "export_news_run",
    "export_results_path",
    "pipeline_report",
    "write_pipeline_report",
]

DOMAIN = "news"
EXPORT_FORMAT = "pocketrec-news-export/1"

logger = logging.getLogger(__name__)


@dataclass
class _Run:
    run_dir: Path
    report: dict
    config: dict
    student: Any
    vocab: Any
    vocab_meta: dict
    inputs: ExportInputs


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected a finished news run)")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_run(run_dir: Path) -> _Run:
    """Everything the export needs from a `run_news` folder, re-checked against its files."""
    from distill.news.pieces import load_piece_vocab
    from distill.news.student import load_news_student

    report = _read_json(run_dir / "report.json")
    if report.get("domain") != DOMAIN:
        raise ValueError(f"{run_dir}: report domain {report.get('domain')!r}, expected 'news'")
    config = _read_json(run_dir / "config.json")
    student = load_news_student(run_dir / "student" / "student_kd.safetensors")
    vocab, meta = load_piece_vocab(run_dir / "student" / "vocab.json")
    if len(vocab) != student.config.vocab_size:
        raise ValueError(
            f"{run_dir}: vocab.json has {len(vocab)} pieces, the student was built for "
            f"{student.config.vocab_size}"
        )
    inputs = read_export_inputs(run_dir, len(vocab))
    teacher_ids = _read_json(run_dir / "teacher" / "items.safetensors.json").get("ids") or []
    if teacher_ids != inputs.catalog:
        raise ValueError(
            f"{run_dir}: the catalog the run kept ({len(inputs.catalog)} items) is not the "
            f"teacher's ({len(teacher_ids)} items)"
        )
    if inputs.corpus.tokens.shape[1] != int(meta["max_tokens"]):
        raise ValueError(
            f"{run_dir}: catalog tokens are {inputs.corpus.tokens.shape[1]} wide, vocab.json "
            f"says max_tokens={meta['max_tokens']}"
        )
    return _Run(run_dir, report, config, student, vocab, meta, inputs)


def export_results_path(out_dir: str | Path) -> Path:
    """Where the export's results go: ``<out_dir>.export.json``, beside the bundle."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".export.json")


def export_news_run(
    run_dir: str | Path,
    out_dir: str | Path,
    preset: str = "avx2",
    force: bool = False,
    *,
    name: str | None = None,
) -> dict:
    """Export the KD student of the `run_news` folder `run_dir` as a news bundle in `out_dir`.

    `preset`: an `export.quantize.PRESETS` name. Refuses a non-empty `out_dir` unless `force`.
    `name`: the bundle's name (default: ``news-<source>`` for a run on an embedded source,
    else ``news-<the data folder's name>``). Raises `ExportError` (graph contract, unsupported
    or changed tokenizer), `ParityError` (a gate failed) or `ValueError` / `FileNotFoundError`
    (not a usable run); nothing is written then. Writes ``<out_dir>.export.json`` and returns
    the bundle's manifest.
    """
    from export.quantize import PRESETS

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "report.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no report.json (expected a finished news run)")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True to replace it")
    run = _load_run(run_dir)
    if name is None:
        source = run.config.get("source")
        name = f"news-{source}" if source else f"news-{Path(run.config['data_folder']).name}"
    manifest = _export(run, out_dir, preset, name)
    results = {
        "format": EXPORT_FORMAT,
        "domain": DOMAIN,
        "run": str(run_dir),
        "bundle": str(out_dir),
        "name": manifest["name"],
        "created": manifest["created"],
        "preset": preset,
        "models": manifest["models"],
        "size_bytes": manifest["size_bytes"],
        "parity": manifest["parity"],
    }
    atomic_write_json(export_results_path(out_dir), results)
    return manifest


def _export(run: _Run, out_dir: Path, preset: str, name: str) -> dict:
    from distill.news.pieces import tokenizer_fingerprint
    from export.news.graphs import export_item_encoder, export_user_encoder
    from export.news.parity import news_parity
    from export.news.tokenizer import hf_tokenizer, pieces_document, tokenizer_spec
    from export.quantize import PRESETS, quantize

    backbone = run.config["teacher"]["backbone"]
    max_tokens = int(run.vocab_meta["max_tokens"])
    max_history = int(run.config["distill"]["max_history"])
    hf = hf_tokenizer(backbone)
    if tokenizer_fingerprint(hf) != run.vocab_meta.get("tokenizer_sha256"):
        raise ExportError(
            f"the tokenizer of {backbone!r} is no longer the one the run's piece vocabulary "
            "was made with"
        )
    spec = tokenizer_spec(hf)
    inputs, scfg = run.inputs, run.student.config
    catalog = inputs.catalog
    logger.info(
        f"{run.run_dir}: {len(catalog)} catalog items, {len(run.vocab)} pieces, dim {scfg.dim}"
    )

    with tempfile.TemporaryDirectory(prefix="pocketrec-news-export-") as tmpname:
        tmp = Path(tmpname)
        paths = {
            "item_fp32": tmp / "item_encoder.fp32.onnx",
            "user_fp32": tmp / "user_encoder.fp32.onnx",
            "item_int8": tmp / ITEM_FILE,
            "user_int8": tmp / USER_FILE,
        }
        item_info = export_item_encoder(run.student.item_encoder, paths["item_fp32"], scfg)
        user_info = export_user_encoder(run.student.user_encoder, paths["user_fp32"], scfg)
        item_q = quantize(paths["item_fp32"], paths["item_int8"], PRESETS[preset])
        user_q = quantize(paths["user_fp32"], paths["user_int8"], PRESETS[preset])
        parity = news_parity(run.student, inputs.corpus, inputs.test, max_history, paths)
        s = parity["summary"]
        logger.info(
            f"parity: torch vs onnx {s['item_torch_vs_onnx_max_abs_diff']:.2g} / "
            f"{s['user_torch_vs_onnx_max_abs_diff']:.2g}, int8 delta auc "
            f"{s['int8_delta_auc']:+.4f}, catalog top-{TOP_K} overlap "
            f"{s[f'int8_catalog_top{TOP_K}_overlap']:.3f}"
        )

        report = run.report
        manifest = {
            "format": BUNDLE_FORMAT,
            "domain": DOMAIN,
            "name": name,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "models": {
                "item": model_entry(item_info, item_q, ITEM_FILE),
                "user": model_entry(user_info, user_q, USER_FILE),
            },
            "pieces": PIECES_FILE,
            "catalog": CATALOG_FILE,
            "text": TEXT_TEMPLATE,
            "max_tokens": max_tokens,
            "max_history": max_history,
            "score": "dot(user_vector, item_vector)",
            "student_config": scfg.to_dict(),
            "metrics": report["models"],
            "params": report.get("params", {}),
            "teacher": report.get("teacher", {}),
            "data": {
                "source": report.get("source"),
                "protocol": report.get("protocol"),
                "impressions": report.get("impressions"),
                "catalog_items": len(catalog),
                "quick": report.get("quick"),
            },
            "parity": parity,
        }
        pieces = pieces_document(spec, run.vocab, max_tokens, backbone)
        documents = {
            "pieces": pieces,
            "catalog": catalog_document(catalog, inputs.items, inputs.clicks, inputs.seen),
            "tokenizer_json": hf.backend_tokenizer.to_str(),
        }
        manifest["cold_start"] = cold_start_settings(inputs.seen)
        write_bundle(
            out_dir,
            {ITEM_FILE: paths["item_int8"], USER_FILE: paths["user_int8"]},
            documents,
            manifest,
        )
    logger.info(
        f"news bundle written to {out_dir} ({sum(manifest['size_bytes'].values()):,} bytes)"
    )
    return manifest


# --------------------------------------------------------------------------- pipeline report


def pipeline_report(run_dir: str | Path, bundle_dir: str | Path) -> dict:
    """The run's report with the export's results: ``size_bytes`` (the bundle's files) and
    ``export`` (bundle folder, name, preset and the parity summary)."""
    report = _read_json(Path(run_dir) / "report.json")
    results = _read_json(export_results_path(bundle_dir))
    return report | {
        "size_bytes": results["size_bytes"],
        "export": {
            "bundle": Path(bundle_dir).name,
            "name": results["name"],
            "preset": results["preset"],
            "parity": results["parity"]["summary"],
        },
    }


def write_pipeline_report(run_dir: str | Path, bundle_dir: str | Path, out_dir: str | Path) -> dict:
    """Write `pipeline_report` as ``out_dir/report.json`` and ``report.md``; returns it."""
    from distill.news.evaluate import report_markdown

    report = pipeline_report(run_dir, bundle_dir)
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", report_markdown(report))
    return report
