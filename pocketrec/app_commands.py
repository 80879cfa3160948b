"""`pocketrec recommend` and `pocketrec app`: the device side's commands (app extra only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketrec.console import fail as _fail


def default_bundle() -> Path:
    from distill.data.codes import assets_dir  # standard library only

    return assets_dir() / "bundles" / "medication-demo"


def _codes(text: str | list[str] | None) -> list[str]:
    if isinstance(text, list):  # a repeated option
        text = ",".join(text)
    if text and ";" in text:
        raise ValueError(f"{text!r}: separate codes with commas, not semicolons")
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def _profile(text: str | list[str] | None, known: list[str]) -> list[tuple[str, str]]:
    """`gender=F,age_band=70-79` as pairs; ValueError for an item without `field=value` or a
    field the bundle's profile does not have."""
    fields = sorted({t.split("=", 1)[0] for t in known if "=" in t})
    pairs = []
    for item in _codes(text):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(
                f"--profile {item!r}: write field=value (e.g. gender=F); "
                f"fields: {', '.join(fields)}"
            )
        if name not in fields:
            raise ValueError(f"--profile {item!r}: no field {name!r}; fields: {', '.join(fields)}")
        pairs.append((name, value))
    return pairs


def cmd_recommend(args: argparse.Namespace) -> int:
    # app-only install: numpy and onnxruntime at most, no pandas, no torch
    import sys

    from app.medication.bundle import load_bundle
    from app.medication.recommender import CodeError, Recommender, resolve_codes
    from app.medication.visit import DDI_SOURCE, unknown_text
    from contract.bundle import BundleError

    try:
        bundle = load_bundle(Path(args.bundle) if args.bundle else default_bundle())
    except BundleError as e:
        return _fail(str(e))
    history = []
    if args.history:
        try:
            history = _history(Path(args.history), bundle)
        except OSError as e:
            return _fail(f"{args.history}: cannot read the history ({e.strerror or e})")
        except (ValueError, CodeError) as e:
            return _fail(
                f"{args.history}: {e}; expected a JSON list of "
                '{"diagnoses": [...], "procedures": [...], "medications": [...]}, oldest first'
            )
    known_profile = list(bundle.vocabs["profile"])
    try:
        profile = _profile(args.profile, known_profile)
        dx = resolve_codes(bundle, "diagnoses", _codes(args.dx))
        px = resolve_codes(bundle, "procedures", _codes(args.px))
    except (ValueError, CodeError) as e:
        return _fail(f"recommend: {e}")
    if not dx:
        return _fail("recommend: --dx needs at least one diagnosis code, e.g. icd9cm:4019")
    if args.top is not None and args.top < 0:
        return _fail(f"recommend: --top must be >= 0 (0: every class), got {args.top}")
    for name, value in profile:
        if f"{name}={value}" not in known_profile:
            values = sorted(t.split("=", 1)[1] for t in known_profile if t.startswith(name + "="))
            print(
                f"pocketrec: warning: --profile {name}={value}: a value the model does not know "
                f"(ignored); it knows {', '.join(values)}",
                file=sys.stderr,
            )
    top = None if not args.top else args.top
    rec = Recommender(bundle, backend=args.backend).recommend(
        dx, px, history=history, profile=profile, top_k=top
    )
    unknown = list(rec.unknown_codes)
    if not rec.visit_read:
        return _fail(
            f"recommend: no known code: the model knows none of {', '.join(dx + px)} (nor their "
            "ICD categories), so it would score an empty visit; check the codes (e.g. "
            "icd9cm:4019)"
        )
    hidden = rec.hidden_suggested
    out = {
        "bundle": bundle.manifest["name"],
        "backend": rec.backend,
        "threshold": rec.threshold,
        "diagnoses": dx,
        "procedures": px,
        "drugs": rec.drugs,
        "shown": len(rec.drugs),
        "n_suggested": rec.n_suggested,
        "suggested_not_shown": hidden,
        "ddi": [{"a": a, "name_a": na, "b": b, "name_b": nb} for a, b, na, nb in rec.ddi],
        "ddi_source": DDI_SOURCE,
        "unknown_codes": unknown,
        "unknown_read_through_category": list(rec.via_category),
        "unknown_profile": list(rec.unknown_profile),
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{out['bundle']} ({rec.backend}): drug classes for this visit, best first. "
        f"* = suggested (probability at or above the bundle's threshold {rec.threshold:.2f})."
    )
    for d in rec.drugs:
        mark = "*" if d["suggested"] else " "
        print(f"{mark} {d['code']}  {d['probability']:.3f}  {d['name']}")
    if hidden:
        print(
            f"cut: {len(rec.suggested)} of {rec.n_suggested} suggested classes shown; "
            f"{hidden} more at or above the threshold "
            f"(--top {rec.n_suggested} or --top 0 lists them)"
        )
    elif top is not None and len(rec.drugs) == top:
        print(f"(the first {top} of {len(bundle.label_codes)} classes; --top 0 lists them all)")
    for a, b, na, nb in rec.ddi:
        print(f"! interaction between two suggested classes: {a} {na} and {b} {nb}")
    if rec.ddi:
        print(f"  interactions: {DDI_SOURCE}")
    if unknown:
        print(unknown_text(unknown, rec.via_category))
    return 0


_HISTORY_KEYS = ("diagnoses", "procedures", "medications")


def _history(path: Path, bundle) -> list[tuple[list[str], list[str], list[str]]]:
    """The `--history` file: a JSON list of visits, oldest first, each an object with (any of)
    "diagnoses", "procedures" and "medications" lists of code strings; diagnosis and procedure
    codes are resolved as `--dx` and `--px` are. ValueError names the visit and the key."""
    from app.medication.recommender import resolve_codes

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"the file holds a JSON {type(data).__name__}, not a list of visits")
    visits = []
    for n, visit in enumerate(data, start=1):
        where = f"visit {n}"
        if not isinstance(visit, dict):
            raise ValueError(f"{where} is a JSON {type(visit).__name__}, not an object")
        extra = sorted(set(visit) - set(_HISTORY_KEYS))
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}")
        parts = []
        for key in _HISTORY_KEYS:
            codes = visit.get(key, [])
            if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
                raise ValueError(f'{where}: "{key}" must be a list of code strings, got {codes!r}')
            if key != "medications":
                codes = resolve_codes(bundle, key, codes)
            parts.append([c.strip() for c in codes if c.strip()])
        visits.append(tuple(parts))
    return visits


def add_pin_parser(app_sub) -> None:
    """`pocketrec app pin set|clear|status [--db PATH]` under `pocketrec app`'s subcommands."""
    pn = app_sub.add_parser("pin", help="set, clear or show the kiosk PIN (stored hashed)")
    pn.add_argument("pin_action", choices=["set", "clear", "status"], metavar="set|clear|status")
    pn.add_argument("--db", help="history database whose PIN it is (default as for `app`)")
    pn.add_argument(
        "--pin", help="the new PIN for `set` (default: asked twice, or one line of stdin)"
    )


def _read_new_pin() -> str:
    import getpass
    import sys

    if not sys.stdin.isatty():  # scripted: one line of standard input
        return sys.stdin.readline().strip()
    first = getpass.getpass("new PIN (at least 4 digits): ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two PINs differ; nothing changed")
    return first


def cmd_app_pin(args: argparse.Namespace) -> int:
    """The kiosk PIN of a history database: set (replacing any), clear, or status."""
    from app.kiosk import PinStore
    from app.storage.errors import HistoryError
    from app.storage.paths import default_db_path, ensure_private_dir

    store = PinStore.beside(Path(args.db).expanduser() if args.db else default_db_path())
    try:
        if args.pin_action == "status":
            state = "a PIN is set" if store.has_pin() else "no PIN is set"
            print(f"{state} ({store.path})")
        elif args.pin_action == "clear":
            had = store.has_pin()
            store.clear_pin()
            print(f"PIN cleared ({store.path})" if had else f"no PIN was set ({store.path})")
        else:
            pin = args.pin if args.pin is not None else _read_new_pin()
            ensure_private_dir(store.path.parent)
            store.set_pin(pin)
            print(f"PIN set ({store.path}): the kiosk asks for it when it next locks")
    except ValueError as e:
        return _fail(f"app pin: {e}")
    except (HistoryError, OSError) as e:
        return _fail(f"app pin: {e}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    # app-only install: flet, sqlite-utils, onnxruntime, numpy
    if args.app_command == "pin":
        return cmd_app_pin(args)
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
