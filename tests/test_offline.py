"""No network at run time: `pocketrec recommend` works with every non-loopback connection
blocked, twice over: in a network namespace that has only loopback (`unshare -n`), and with a
socket guard that records any attempt to reach another address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "assets" / "bundles" / "medication-demo"
GUARD = Path(__file__).resolve().parent / "offline"


def _netns_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return r.returncode == 0


def offline_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), str(ROOT), env.get("PYTHONPATH", "")])
    env["POCKETREC_NET_LOG"] = str(tmp_path / "net.log")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def recommend_cmd() -> list[str]:
    return [
        sys.executable,
        "-m",
        "pocketrec.cli",
        "recommend",
        "--bundle",
        str(BUNDLE),
        "--dx",
        "icd9cm:4280,icd9cm:42731",
        "--px",
        "icd9pcs:3893",
        "--json",
    ]


def test_the_guard_blocks_and_records(tmp_path):
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    env = offline_env(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "network blocked" in r.stderr
    assert "192.0.2.1" in (tmp_path / "net.log").read_text()


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="the shipped bundle is not built yet")
def test_recommend_makes_no_network_attempt(tmp_path):
    r = subprocess.run(
        recommend_cmd(), env=offline_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["drugs"] and all(0.0 <= d["probability"] <= 1.0 for d in out["drugs"])
    log = tmp_path / "net.log"
    assert not log.exists() or log.read_text() == "", log.read_text()


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="the shipped bundle is not built yet")
def test_recommend_in_a_namespace_without_network(tmp_path):
    if not _netns_available():
        if os.environ.get("POCKETREC_REQUIRE_NETNS") == "1":
            pytest.fail("unshare -n is not available but POCKETREC_REQUIRE_NETNS=1")
        pytest.skip("unshare -n (network namespaces) is not available here")
    # only loopback exists in the new namespace
    cmd = ["unshare", "-n", *recommend_cmd()]
    r = subprocess.run(cmd, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["drugs"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="the shipped bundle is not built yet")
def test_web_app_serves_its_client_offline(tmp_path):
    """The kiosk server starts and serves the whole Flet web client from local files, with the
    socket guard on: no connection to any other address is even attempted."""
    import time
    import urllib.request

    port = _free_port()
    env = offline_env(tmp_path) | {"POCKETREC_NO_BROWSER": "1"}
    code = (
        "from app.main import run; "
        f"run(web=True, port={port}, db={str(tmp_path / 'h.db')!r}, bundle={str(BUNDLE)!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        page = None
        while time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(base + "/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert page is not None, "the app did not start serving in 60 s"
        assert "flutter" in page.lower()
        # the Flutter bootstrap script is served locally, not from a CDN
        boot = urllib.request.urlopen(base + "/flutter_bootstrap.js", timeout=5)
        assert boot.status == 200
    finally:
        proc.kill()
        proc.wait(timeout=10)
    log = tmp_path / "net.log"
    assert not log.exists() or log.read_text() == "", log.read_text()
