"""The shipped bundle through `pocketrec recommend`, as an app-only install runs it: the heavy
training libraries are blocked in the child process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"

APP_ONLY = """
import sys
for name in ("torch", "transformers", "pandas", "safetensors", "peft", "optimum", "export"):
    sys.modules[name] = None
from pocketrec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def recommend(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", APP_ONLY, "recommend", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_shipped_bundle_scores_a_visit_without_training_libraries():
    r = recommend(
        "--dx", "icd9cm:4280,icd9cm:42731", "--px", "icd9pcs:3893", "--top", "5", "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["bundle"] == "medication-mimic4-demo"
    probs = [d["probability"] for d in out["drugs"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    assert manifest["parity"]["summary"]["passed"] is True
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) <= 1_000_000


def test_unknown_codes_are_reported_not_dropped():
    r = recommend("--dx", "icd9cm:4280,icd9cm:NOPE", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unknown_codes"] == ["icd9cm:NOPE"]


def test_a_flipped_byte_is_refused_with_a_clear_message(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    model = copy / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    r = recommend("--bundle", str(copy), "--dx", "icd9cm:4280")
    assert r.returncode == 2
    assert "model.int8.onnx" in r.stderr and "sha256" in r.stderr
    assert "Traceback" not in r.stderr


NEWS_APP_ONLY = """
import sys, json, tempfile
from pathlib import Path
for name in ("torch", "transformers", "pandas", "safetensors", "peft", "optimum", "export",
             "distill"):
    sys.modules[name] = None
from app.storage.database import History
from app.news.state import NewsState
folder = Path(tempfile.mkdtemp())
news = NewsState(History(folder / "pocketrec.db"))
assert news.ensure_loaded(), news.error
cold = news.feed()
for item_id in cold.ids[:3]:
    news.open_item(item_id)
warm = news.feed()
print(json.dumps({"name": news.bundle_name, "cold": [cold.method, cold.ids],
                  "warm": [warm.method, warm.ids], "clicks": news.clicks()}))
"""


def test_shipped_news_bundle_feeds_a_reader_without_training_libraries():
    r = subprocess.run(
        [sys.executable, "-c", NEWS_APP_ONLY], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["name"] == "news-movielens-demo"
    assert out["cold"][0] == "popular" and len(out["cold"][1]) == 10
    assert out["warm"][0] == "model" and out["clicks"] == out["cold"][1][:3]
    assert not set(out["clicks"]) & set(out["warm"][1])
    manifest = json.loads((ROOT / "assets" / "bundles" / "news-demo" / "manifest.json").read_text())
    assert manifest["parity"]["passed"] is True
    assert set(manifest["metrics"]) == {"teacher", "student_kd", "student_nokd", "popularity"}


def test_shipped_news_bundle_carries_tokenizer_json_and_both_tokenizers_agree():
    """The shipped news bundle carries the teacher's tokenizer.json, which the app runs in the
    tokenizers library where it installs; the pure-Python fallback of the platforms without
    it gives the same pieces and ids for every text of the shipped catalog."""
    import pytest

    pytest.importorskip("tokenizers")
    from app.news.bundle import load_news_bundle
    from app.news.tokenizer import item_text

    folder = ROOT / "assets" / "bundles" / "news-demo"
    library = load_news_bundle(folder)
    python = load_news_bundle(folder, prefer_library_tokenizer=False)
    assert library.manifest["tokenizer_json"] in library.manifest["files"]
    assert (library.tokenizer.backend, python.tokenizer.backend) == ("tokenizers", "python")
    texts = [item_text(i.title, i.category) for i in library.catalog.values()]
    assert len(texts) == 9742
    differ = [t for t in texts if library.tokenizer.tokenize(t) != python.tokenizer.tokenize(t)]
    assert differ == []
    assert all(library.tokenizer.encode(t) == python.tokenizer.encode(t) for t in texts)
