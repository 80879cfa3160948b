"""The News tab's start on the device: the first start (the bundle verified and loaded, every
catalog title tokenized and encoded once into the SQLite item-vector cache), a restart on that
cache (no encoder call), and the feeds (cold: no clicks; warm: after three clicks).

The first start and the restart are timed at the level the app uses them (`load_news_bundle` +
`NewsRanker` on a fresh or a filled database), once with each tokenizer the app may run: the
`tokenizers` library on the bundle's tokenizer.json (desktop, kiosk) and the pure-Python
fallback (platforms without the library). The feeds are timed through `NewsState`, as the app
calls it. One thread (onnxruntime intra-op 1), `--repeats` fresh databases per tokenizer, median.

Usage: python bench/news_startup.py [--bundle assets/bundles/news-demo] [--repeats 3]
Writes bench/results/news_startup.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import atexit  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness.measure import machine_info  # noqa: E402
from contract.files import atomic_write_json  # noqa: E402

OUT = ROOT / "bench" / "results" / "news_startup.json"


def start(bundle_path: Path, db: Path, library: bool) -> tuple[float, int, str]:
    """(seconds, items in the cache, tokenizer backend) of one start on the database `db`."""
    from app.news.bundle import load_news_bundle
    from app.news.ranker import NewsRanker

    t = time.perf_counter()
    bundle = load_news_bundle(bundle_path, prefer_library_tokenizer=library)
    ranker = NewsRanker(bundle, db, threads=1)
    return time.perf_counter() - t, len(ranker.store), bundle.tokenizer.backend


def feeds(bundle_path: Path, folder: Path) -> dict:
    """The app's own path: NewsState on a fresh database, feed, three clicks, feed."""
    from app.news.state import NewsState
    from app.storage.database import History

    news = NewsState(History(folder / "feeds.db"), bundle_path, threads=1)
    t = time.perf_counter()
    assert news.ensure_loaded(), news.error
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    cold = news.feed()
    cold_s = time.perf_counter() - t
    for item_id in cold.ids[:3]:
        news.open_item(item_id)
    t = time.perf_counter()
    warm = news.feed()
    warm_s = time.perf_counter() - t
    return {
        "first_start_s": loaded,
        "feed_cold_ms": cold_s * 1e3,
        "feed_cold_method": cold.method,
        "feed_after_3_clicks_ms": warm_s * 1e3,
        "feed_after_3_clicks_method": warm.method,
        "items_shown": len(warm.ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "assets" / "bundles" / "news-demo")
    ap.add_argument("--repeats", type=int, default=3, help="fresh databases per tokenizer")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from app.news.tokenizer import tokenizers_available

    work = Path(tempfile.mkdtemp(prefix="pocketrec-news-startup-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the databases, ~30 MB
    backends = [True, False] if tokenizers_available() else [False]
    result: dict = {"starts": {}}
    for library in backends:
        first, restart, name = [], [], ""
        for k in range(args.repeats):
            db = work / f"{'lib' if library else 'py'}{k}.db"
            s, items, name = start(args.bundle, db, library)
            first.append(s)
            s, _, _ = start(args.bundle, db, library)  # the same database, filled
            restart.append(s)
        result["starts"][name] = {
            "items": items,
            "first_start_s": statistics.median(first),
            "restart_s": statistics.median(restart),
            "first_start_all_s": first,
            "restart_all_s": restart,
        }
        print(
            f"{name:>10}: first start {statistics.median(first):.2f} s ({items:,} items "
            f"tokenized and encoded), restart {statistics.median(restart):.2f} s"
        )
    result["feeds"] = feeds(args.bundle, work)
    f = result["feeds"]
    print(
        f"app (NewsState): first start {f['first_start_s']:.2f} s; feed cold "
        f"{f['feed_cold_ms']:.1f} ms ({f['feed_cold_method']}), after 3 clicks "
        f"{f['feed_after_3_clicks_ms']:.1f} ms ({f['feed_after_3_clicks_method']})"
    )
    result |= {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(args.bundle),
        "repeats": args.repeats,
        "threads": 1,
        "machine": machine_info(),
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
