"""`pocketrec recommend` and `pocketrec app`: the device side's commands (app extra only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketrec.console import fail as _fail


def default_bundle() -> Path:
    from distill.data.codes import assets_dir  # standard library only

    return assets_dir() / "bundles" / "medication-demo"


def _codes(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def cmd_recommend(args: argparse.Namespace) -> int:
    # app-only install: numpy and onnxruntime at most, no pandas, no torch
    from app.medication.bundle import load_bundle
    from app.medication.recommender import Recommender
    from contract.bundle import BundleError

    try:
        bundle = load_bundle(Path(args.bundle) if args.bundle else default_bundle())
    except BundleError as e:
        return _fail(str(e))
    history = []
    if args.history:
        try:
            data = json.loads(Path(args.history).read_text(encoding="utf-8"))
            history = [
                (v.get("diagnoses", []), v.get("procedures", []), v.get("medications", []))
                for v in data
            ]
        except (OSError, ValueError, AttributeError, TypeError) as e:
            return _fail(
                f"{args.history}: cannot read the history ({e}); expected a JSON list of "
                '{"diagnoses": [...], "procedures": [...], "medications": [...]}, oldest first'
            )
    profile = [tuple(p.split("=", 1)) for p in _codes(args.profile) if "=" in p]
    dx = _codes(args.dx)
    if not dx:
        return _fail("recommend: --dx needs at least one diagnosis code, e.g. icd9cm:4019")
    rec = Recommender(bundle, backend=args.backend).recommend(
        dx, _codes(args.px), history=history, profile=profile, top_k=args.top
    )
    out = {
        "bundle": bundle.manifest["name"],
        "backend": rec.backend,
        "drugs": rec.drugs,
        "ddi": [list(p) for p in rec.ddi],
        "unknown_codes": list(rec.unknown_codes),
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for d in rec.drugs:
            mark = "*" if d["suggested"] else " "
            print(f"{mark} {d['code']}  {d['probability']:.3f}  {d['name']}")
        for p in rec.ddi:
            print(f"! interaction: {p[0]} + {p[1]}")
        if rec.unknown_codes:
            print(f"unknown codes (not in the bundle's vocabulary): {', '.join(rec.unknown_codes)}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    # app-only install: flet, sqlite-utils, onnxruntime, numpy
    if args.app_command == "backup":
        from app.storage.database import History
        from app.storage.errors import HistoryError

        try:
            history = History(Path(args.db) if args.db else None)
            path = history.backup(Path(args.out))
            history.close()
        except HistoryError as e:
            return _fail(str(e))
        print(f"backup written: {path}")
        return 0
    if args.app_command == "restore":
        from app.storage.database import restore
        from app.storage.errors import HistoryError

        try:
            restore(Path(args.backup), Path(args.db) if args.db else None)
        except HistoryError as e:
            return _fail(str(e))
        print(f"restored {args.backup} into {args.db or 'the default database'}")
        return 0
    from app.main import run
    from app.storage.errors import HistoryError
    from contract.bundle import BundleError

    if args.port is not None and not 1 <= args.port <= 65535:
        return _fail(f"app: --port must be 1..65535, got {args.port}")
    try:
        run(
            bundle=args.bundle,
            web=args.web or args.kiosk,
            port=args.port or 8550,
            kiosk=args.kiosk,
            db=args.db,
            pin=args.pin,
            news_bundle=args.news_bundle,
        )
    except (HistoryError, BundleError) as e:  # a full disk, a locked database, a bad bundle
        return _fail(f"app: {e}")
    return 0
