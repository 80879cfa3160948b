"""News ranking latency on the device path: one reader, 1,000 cached candidates, one thread.

What is timed (batch 1, `--calls` calls, p50/p95) is `app.news.ranker.NewsRanker.rank` with
the int8 onnxruntime graphs: the user encoder on a 50-item history (the history's item vectors
come from the SQLite-backed cache, loaded in memory), 1,000 dot products with the candidates'
cached vectors and the top 10. Its two parts are timed on their own too. Target: p50 <= 2 ms.

The bundle comes from a real run: the shipped MovieLens sample converted to MIND
(`distill.data.movielens.movielens_to_mind`), `run_news(..., quick=True)` with the MiniLM
teacher and `export.news.run.export_news_run`. The script also checks the app's tokenizer
against the teacher's Hugging Face tokenizer on every MovieLens title (identical pieces and
identical student ids required) and writes everything to bench/results/news_ranking.json
(atomically).

Usage: python bench/news_ranking.py [--run RUN_DIR --data MIND_DIR] [--work DIR] [--calls 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread for numpy's dot products too

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import measure  # noqa: E402
from bench.harness.measure import percentiles  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

TARGET_P50_MS = 2.0
RESULT = ROOT / "bench" / "results" / "news_ranking.json"


def timed(fn, calls: int, warmup: int = 20) -> dict:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return percentiles(out)


def machine_info() -> dict:
    """The machine facts this bench reports."""
    facts = measure.machine_info()
    return {k: facts[k] for k in ("cpu", "cpus", "platform", "python", "onnxruntime", "numpy")}


def build(work: Path, run: Path | None, data: Path | None) -> tuple[Path, Path, Path, dict]:
    """(MIND folder, run folder, bundle folder, seconds per stage)."""
    from distill.data.movielens import movielens_to_mind
    from distill.news.run import run_news
    from export.news.run import export_news_run

    seconds = {}
    if run is None:
        data = work / "mind"
        t = time.perf_counter()
        movielens_to_mind(ROOT / "assets" / "data" / "movielens_small", data)
        seconds["convert"] = time.perf_counter() - t
        run = work / "run"
        t = time.perf_counter()
        run_news(run, data, quick=True, force=True)
        seconds["run_news_quick"] = time.perf_counter() - t
    bundle = work / "bundle"
    t = time.perf_counter()
    export_news_run(run, bundle, force=True, name="news-movielens-small")
    seconds["export"] = time.perf_counter() - t
    if data is None:
        data = Path(json.loads((run / "config.json").read_text())["data_folder"])
    return data, run, bundle, seconds


def tokenizer_agreement(bundle_path: Path, data: Path) -> dict:
    """The app's tokenizers (the `tokenizers` library on the bundle's tokenizer.json, and the
    pure-Python fallback) vs the teacher's HF tokenizer on every title of the MIND folder:
    the library one's figures at the top level, the fallback's under "python_fallback"."""
    out = _agreement(bundle_path, data, prefer_library=True)
    if out.get("backend") == "tokenizers":
        out["python_fallback"] = _agreement(bundle_path, data, prefer_library=False)
    return out


def _agreement(bundle_path: Path, data: Path, prefer_library: bool) -> dict:
    from transformers import AutoTokenizer

    from app.news.bundle import load_news_bundle
    from distill.backbone import resolve_backbone
    from distill.data.mind import load_mind
    from distill.data.vocab import Vocab
    from distill.news.pieces import encode_texts
    from distill.news.samples import item_text

    bundle = load_news_bundle(bundle_path, prefer_library_tokenizer=prefer_library)
    tok = bundle.tokenizer
    source = resolve_backbone(bundle.manifest["teacher"]["backbone"])
    hf = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
    vocab = Vocab.from_json(tok.pieces)
    items = load_mind(data).items
    out: dict = {"backend": tok.backend}
    for kind, texts in (
        ("titles", [it.title for it in items.values()]),
        ("category_title_texts", [item_text(it) for it in items.values()]),
    ):
        want = [hf.tokenize(t) for t in texts]
        got = [tok.tokenize(t) for t in texts]
        same_pieces = sum(a == b for a, b in zip(got, want, strict=True))
        ids_want = encode_texts(texts, hf.tokenize, vocab, tok.max_tokens)
        ids_got = np.zeros_like(ids_want)
        for i, t in enumerate(texts):
            ids = tok.encode(t)
            ids_got[i, : len(ids)] = ids
        same_ids = int((ids_got == ids_want).all(axis=1).sum())
        out[kind] = {
            "texts": len(texts),
            "identical_pieces": int(same_pieces),
            "identical_student_ids": same_ids,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="an existing run_news folder (default: make one)")
    ap.add_argument("--data", type=Path, help="the MIND folder that run read")
    ap.add_argument("--work", type=Path, help="keep the MIND data, run and bundle here")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()

    from app.news.bundle import load_news_bundle
    from app.news.ranker import NewsRanker

    t_start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="pocketrec-news-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data, run, bundle_path, seconds = build(work, args.run, args.data)
        agreement = tokenizer_agreement(bundle_path, data)
        bundle = load_news_bundle(bundle_path)
        db = work / "item_vectors.db"
        db.unlink(missing_ok=True)

        t = time.perf_counter()
        first = NewsRanker(bundle, db, threads=1, max_history=args.history)
        open_first = time.perf_counter() - t
        computed = first.store.encoder_calls
        first.close()
        t = time.perf_counter()
        ranker = NewsRanker(bundle, db, threads=1, max_history=args.history)
        open_again = time.perf_counter() - t

        ids = list(ranker.store.ids)
        rng = random.Random(0)
        picked = rng.sample(ids, args.history + args.candidates)
        history, candidates = picked[: args.history], picked[args.history :]
        store = ranker.store
        user = ranker.user_vector(history)
        hist_vecs = store.vectors(history)
        rows = np.array([store.row[c] for c in candidates])

        def dots_and_top() -> None:
            scores = store.matrix[rows] @ user
            top = np.argpartition(-scores, 9)[:10]
            top[np.argsort(-scores[top], kind="stable")]

        load_before = os.getloadavg()
        rows_out = {
            "rank": timed(lambda: ranker.rank(history, candidates, top_k=10), args.calls),
            "user_encoder": timed(lambda: ranker.encoders.user_vector(hist_vecs), args.calls),
            "dots_top10": timed(dots_and_top, args.calls),
        }
        load_after = os.getloadavg()
        assert len(ranker.rank(history, candidates, top_k=10).items) == 10
        ranker.close()

        p50 = rows_out["rank"]["p50_ms"]
        verdict = "PASS" if p50 <= TARGET_P50_MS else "MISS"
        manifest = bundle.manifest
        result = {
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "what": (
                f"NewsRanker.rank: user encoder (int8 ORT) on a {args.history}-item history + "
                f"{args.candidates} dot products with cached item vectors + top-10; batch 1, "
                "one thread (ORT intra-op 1, BLAS 1)"
            ),
            "config": {
                "calls": args.calls,
                "warmup": 20,
                "candidates": args.candidates,
                "history": args.history,
                "top_k": 10,
                "threads": 1,
                "backend": "onnxruntime int8 (preset avx2)",
            },
            "latency": rows_out,
            "target_p50_ms": TARGET_P50_MS,
            "verdict": verdict,
            "item_store": {
                "catalog_items": len(ids),
                "first_open_s": open_first,
                "first_open_encoder_calls": computed,
                "reopen_s": open_again,
                "reopen_encoder_calls": ranker.store.encoder_calls,
            },
            "tokenizer_agreement": agreement,
            "bundle": {
                "files": manifest["size_bytes"],
                "total_bytes": sum(manifest["size_bytes"].values()),
                "parity": manifest["parity"]["summary"],
                "metrics": {k: v["auc"] for k, v in manifest["metrics"].items()},
                "data": manifest["data"],
            },
            "build_s": seconds,
            "machine": machine_info(),
            # other work on the machine shows here (and in p95): 1-minute load average
            "loadavg_1min": {"before_timing": load_before[0], "after_timing": load_after[0]},
            "wall_s": time.perf_counter() - t_start,
        }
        atomic_write_json(args.out, result)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    names = {
        "rank": f"rank {args.candidates:,} candidates (user encoder + dots + top-10)",
        "user_encoder": f"user encoder alone ({args.history}-item history)",
        "dots_top10": f"{args.candidates:,} dot products + top-10 alone",
    }
    print(f"\n| batch 1, one thread, {args.calls} calls | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for key, r in rows_out.items():
        print(f"| {names[key]} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} |")
    print(f"\ntarget p50 <= {TARGET_P50_MS:g} ms: {verdict} (p50 {p50:.3f} ms)")
    print(f"load average (1 min) before/after timing: {load_before[0]:.2f} / {load_after[0]:.2f}")
    for label, agree in (("", agreement), (" (python fallback)", agreement.get("python_fallback"))):
        for kind, a in (agree or {}).items():
            if not isinstance(a, dict) or "texts" not in a:
                continue
            print(
                f"tokenizer{label} [{agree.get('backend')}] vs HF on {a['texts']:,} {kind}: "
                f"{a['identical_pieces']:,} identical pieces, {a['identical_student_ids']:,} "
                "identical student ids"
            )
    print(f"bundle: {result['bundle']['total_bytes']:,} bytes; wrote {args.out}")


if __name__ == "__main__":
    main()
