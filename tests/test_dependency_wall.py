"""The dependency wall: `app/` runs on the standard library, flet, sqlite_utils, onnxruntime and
numpy, and the shared ground floor `contract/` (standard library and numpy only). Nothing under
app/ or contract/ may import torch, transformers, safetensors, pandas, the training code
(`distill`), the export code (`export`) or the front door (`pocketrec`): the app ships without
them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
SHIPPED = (ROOT / "app", ROOT / "contract")  # what the app build carries
ALLOWED_THIRD_PARTY = {"flet", "sqlite_utils", "onnxruntime", "numpy", "tokenizers"}
ALLOWED = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"app", "contract"}
BLOCKED = (
    "torch",
    "transformers",
    "safetensors",
    "pandas",
    "peft",
    "optimum",
    "distill",
    "export",
    "pocketrec",
)


def app_modules() -> list[str]:
    """Dotted names of every module under app/ and contract/ (packages by their __init__)."""
    names = []
    for path in sorted(p for folder in SHIPPED for p in folder.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_app_has_modules():
    assert {"app", "app.main", "contract", "contract.bundle"} <= set(app_modules())


def test_every_app_module_imports_with_the_heavy_packages_blocked():
    script = f"""
import importlib, json, sys
for name in {list(BLOCKED)!r}:
    sys.modules[name] = None  # any import of it raises ImportError
failed = {{}}
for module in {app_modules()!r}:
    try:
        importlib.import_module(module)
    except Exception as e:
        failed[module] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(failed))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed == {}, failed


def imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import, including importlib/__import__ calls
    with a literal module name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append((node.lineno, arg.value.split(".")[0]))
    return found


def test_app_imports_only_allowed_packages():
    bad = []
    for path in sorted(p for folder in SHIPPED for p in folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, root in imported_roots(tree):
            if root not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    assert bad == [], "\n".join(bad)


def test_the_static_check_catches_forbidden_imports():
    code = "import os\nimport torch.nn\nfrom distill.student import X\nfrom . import runtime\n"
    code += "import importlib\nimportlib.import_module('pandas')\n"
    roots = [r for _, r in imported_roots(ast.parse(code))]
    assert [r for r in roots if r not in ALLOWED] == ["torch", "distill", "pandas"]
