"""The news bundle's files besides the graphs: the model card, the catalog with its cold-start
activity, the manifest entries, and writing the folder.

```
manifest.json  item_encoder.int8.onnx  user_encoder.int8.onnx  pieces.json  catalog.json.gz
card.md  tokenizer.json
```

`tokenizer.json` is the teacher's own Hugging Face tokenizer file (manifest key
"tokenizer_json"): the app runs it in the `tokenizers` library where that installs, and falls
back to the pure-Python tokenizer pieces.json describes where it does not.

`catalog.json.gz` maps item id -> {title, category, clicks, seen}: `clicks` (positive labels in
the training and validation impressions) and `seen` (unix time first seen) feed the app's
popular-and-recent cold start, with the clock and half-life in the manifest's `cold_start`.
The bundle is written into a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from contract.bundle import CARD_FILE, CATALOG_FILE, MANIFEST_FILE, PIECES_FILE
from contract.files import json_text, sha256_file, staging_dir
from distill.news.evaluate import format_number as _fmt
from distill.news.pieces import TEXT_TEMPLATE
from export.news.parity import TOP_K

TOKENIZER_FILE = "tokenizer.json"

__all__ = [
    "TOKENIZER_FILE",
    "catalog_document",
    "cold_start_settings",
    "model_card",
    "write_bundle",
]


def model_card(manifest: dict) -> str:
    """A short model card for the news bundle."""
    m = manifest
    p = m.get("parity", {}).get("summary", {})
    d = m["data"]
    n = d.get("impressions") or {}
    lines = [
        f"# Model card: {m['name']}",
        "",
        "## What it is",
        f"An NRMS-style news student ({m['params'].get('student', 0):,} parameters; item encoder "
        f"over word pieces, user encoder over the clicked items' vectors, dim "
        f"{m['student_config'].get('dim')}) distilled from the teacher "
        f"`{m['teacher'].get('backbone')}` ({m['params'].get('teacher', 0):,} parameters). It "
        "ranks catalog items for a reader by the dot product of a user vector, computed from "
        f"the last {m['max_history']} clicked items, with each item's vector, computed once "
        f"from `{TEXT_TEMPLATE}` (at most {m['max_tokens']} word pieces).",
        "",
        "## Intended use",
        "A private, offline reading feed: suggestions to browse, ranked on the device. It knows "
        "titles and categories only, not the articles, not their truth, and not what is "
        "important; it learns the reader's past clicks and will repeat their tastes back.",
        "",
        "## Data",
        f"Source `{d.get('source')}`, protocol `{d.get('protocol')}` (train on the earlier "
        f"impressions, test on the latest): {n.get('train')} train, {n.get('val')} validation "
        f"and {n.get('test')} test impressions; catalog of {d.get('catalog_items')} items"
        + (f" ({d['quick']})" if d.get("quick") else "")
        + ".",
        "",
        "## Metrics (test impressions; ± std over bootstrap resamples)",
        "",
        "| model | auc | mrr | ndcg5 | ndcg10 |",
        "|---|---|---|---|---|",
    ]
    for name, v in m.get("metrics", {}).items():
        cells = [
            f"{_fmt(v.get(k))} ± {_fmt(v.get(k + '_std', 0))}"
            for k in ("auc", "mrr", "ndcg5", "ndcg10")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Export",
        f"Two ONNX graphs (opset {m['models']['item']['opset']}), int8 preset "
        f"`{m['models']['item']['quantization'].get('name')}`. Parity: item encoder torch vs "
        f"fp32 ONNX max |diff| {_fmt(p.get('item_torch_vs_onnx_max_abs_diff'), '.2g')}, user "
        f"encoder {_fmt(p.get('user_torch_vs_onnx_max_abs_diff'), '.2g')}; int8 vs fp32 on "
        f"{p.get('n_test_impressions')} test impressions: AUC {_fmt(p.get('int8_auc'))} vs "
        f"{_fmt(p.get('fp32_auc'))}, mean top-{TOP_K} overlap of the catalog ranking "
        f"{_fmt(p.get(f'int8_catalog_top{TOP_K}_overlap'), '.3f')}.",
        "",
        "## Known limits",
        "- The catalog is what the bundle was built on; new items are encoded on the device "
        "from their title and category, and words the teacher's tokenizer splits into pieces "
        "the catalog never used become unknown pieces.",
        "- An empty history falls back to popularity and recency (clicks the app counts), or "
        "to the model's learned start vector when no counts are given.",
        "- Small, quick training runs: compare with the popularity baseline above before "
        "trusting the ranking.",
        "",
    ]
    return "\n".join(lines)


def cold_start_settings(seen: dict[str, int]) -> dict:
    """The clock and half-life of the app's popular-and-recent fallback. The catalog's clock
    stops at its latest item, not at the device's today (a catalog from 2018 would otherwise
    decay to nothing), and the half-life is a tenth of the catalog's time span (a few days for
    MIND's six weeks, about two years for MovieLens' two decades)."""
    if not seen:
        return {"now": None, "half_life_hours": 24.0}
    first, last = min(seen.values()), max(seen.values())
    half_life = max(1.0, (last - first) / 10 / 3600)
    return {"now": last, "half_life_hours": round(half_life, 1)}


def catalog_document(
    catalog: list[str],
    items: dict[str, dict[str, str]],
    clicks: dict[str, int],
    seen: dict[str, int],
) -> dict[str, dict]:
    """The content of catalog.json.gz: item id -> {title, category[, clicks][, seen]}, in
    catalog order (`clicks` only when there were any, `seen` only when known)."""
    out = {}
    for i in catalog:
        row = {"title": items[i]["title"], "category": items[i]["category"]}
        if clicks.get(i):
            row["clicks"] = clicks[i]
        if i in seen:
            row["seen"] = seen[i]
        out[i] = row
    return out


def write_bundle(out_dir: Path, files: dict[str, Path], documents: dict, manifest: dict) -> None:
    """Copy/write everything into a temp sibling of `out_dir`, hash it, rename into place
    (replacing `out_dir`: the caller has checked it may)."""
    with staging_dir(out_dir, force=True) as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        (tmp / PIECES_FILE).write_text(json_text(documents["pieces"], compact=True), "utf-8")
        if documents.get("tokenizer_json") is not None:
            (tmp / TOKENIZER_FILE).write_text(documents["tokenizer_json"], encoding="utf-8")
            manifest["tokenizer_json"] = TOKENIZER_FILE
        raw = json.dumps(documents["catalog"], separators=(",", ":"), ensure_ascii=False)
        (tmp / CATALOG_FILE).write_bytes(gzip.compress(raw.encode("utf-8"), mtime=0))
        (tmp / CARD_FILE).write_text(model_card(manifest), encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest["files"] = {n: sha256_file(tmp / n) for n in names}
        manifest["size_bytes"] = {n: (tmp / n).stat().st_size for n in names}
        (tmp / MANIFEST_FILE).write_text(json_text(manifest), encoding="utf-8")
