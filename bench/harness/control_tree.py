"""The page as a Flet server describes it to its client, kept in memory and patched in place:
what bench/harness/flet_protocol.py's client looks at instead of a screen.

The REGISTER_CLIENT answer's `page_patch` is the whole Page control (a dict with `_c` type and
`_i` id, children nested as dicts and lists). A PATCH_CONTROL `{id, patch}`: `patch[0]` is a
path tree `[node, {key: [node, {...}]}]` relative to control `id`, then operations `[0, node,
key, value]` replace, `[1, node, key, value]` add (list insert), `[2, node, key]` remove, `[3,
node, key, node, key]` move; applied in order (flet 1.0.5, `flet/messaging/protocol.py`).

Controls are found by the app's test identifiers (`tid(...)` in app/views/common.py: an
`ft.Semantics(identifier=...)` around the control), in the visible part of the tree (a control
with `visible: False` hides its subtree).
"""

from __future__ import annotations

from bench.harness.app_ui import SHOWN_IDS
from bench.harness.errors import UnexpectedError

OP_REPLACE, OP_ADD, OP_REMOVE, OP_MOVE = 0, 1, 2, 3


class ControlTree:
    """The page as the server described it: nested dicts (controls carry `_c` and `_i`) and
    lists, patched in place; an id index for patch targets, rebuilt after structural changes;
    a scan of the visible Semantics identifiers, cached per version."""

    def __init__(self, page: dict):
        self.root = page
        self.version = 0
        self.index: dict[int, dict] = {}
        self.missing_targets = 0
        self._scan_version = -1
        self._ids: dict[str, dict] = {}
        self.reindex()

    def reindex(self) -> None:
        index = {}
        stack: list = [self.root]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                if "_i" in v and "_c" in v:
                    index[v["_i"]] = v
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
        self.index = index

    def apply(self, control_id: int, patch: list) -> None:
        target = self.index.get(control_id)
        if target is None:
            self.missing_targets += 1  # Flutter ignores these too; counted, a sign of desync
            return
        paths: dict[int, list] = {}
        stack = [(patch[0], [])]
        while stack:
            node, path = stack.pop()
            paths[node[0]] = path
            if len(node) > 1 and isinstance(node[1], dict):
                stack.extend((child, [*path, key]) for key, child in node[1].items())

        def resolve(n: int):
            obj = target
            for key in paths[n]:
                obj = obj[key]
            return obj

        structural = False
        for op in patch[1:]:
            kind = op[0]
            if kind == OP_REPLACE:
                obj = resolve(op[1])
                obj[op[2]] = op[3]
                structural |= isinstance(op[3], dict | list)
            elif kind == OP_ADD:
                obj = resolve(op[1])
                if isinstance(obj, list):
                    obj.insert(op[2], op[3])
                else:
                    obj[op[2]] = op[3]
                structural = True
            elif kind == OP_REMOVE:
                obj = resolve(op[1])
                if isinstance(obj, list):
                    del obj[op[2]]
                else:
                    obj.pop(op[2], None)
                structural = True
            elif kind == OP_MOVE:
                src, dst = resolve(op[1]), resolve(op[3])
                item = src.pop(op[2])
                if isinstance(dst, list):
                    dst.insert(op[4], item)
                else:
                    dst[op[4]] = item
                structural = True
            else:
                raise UnexpectedError(f"unknown patch operation {op!r}")
        if structural:
            self.reindex()
        self.version += 1

    # -- finding things

    def _scan(self) -> dict[str, dict]:
        if self._scan_version != self.version:
            self._ids = {}
            for identifier, node in _walk_ids(self.root):
                self._ids.setdefault(identifier, node)
            self._scan_version = self.version
        return self._ids

    def semantics(self, identifier: str) -> dict | None:
        """The visible Semantics node carrying `identifier`, or None."""
        return self._scan().get(identifier)

    def control(self, identifier: str) -> dict | None:
        """The control wrapped by the Semantics node `identifier`."""
        node = self.semantics(identifier)
        return None if node is None else node.get("content")

    def has(self, identifier: str) -> bool:
        return identifier in self._scan()

    def ids_under(self, identifier: str) -> list[str]:
        node = self.semantics(identifier)
        if node is None:
            return []
        return [i for i, _ in _walk_ids(node.get("content"))]

    def text(self, identifier: str) -> str | None:
        """The texts under `identifier` joined (a text field: its value), None if absent."""
        node = self.semantics(identifier)
        if node is None:
            return None
        content = node.get("content")
        if isinstance(content, dict) and content.get("_c") == "TextField":
            return content.get("value") or ""
        return " ".join(_texts(content))

    def shown(self) -> dict:
        """What a few identifiers show (for error reports)."""
        return {i: self.text(i) for i in SHOWN_IDS}

    def identifiers(self) -> list[str]:
        return list(self._scan())


def _visible(root, kind: str, key: str) -> list[dict]:
    """The controls of type `kind` whose `key` is a string, in tree order, skipping invisible
    subtrees."""
    out = []
    stack = [root]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if v.get("visible") is False:
                continue
            if v.get("_c") == kind and isinstance(v.get(key), str):
                out.append(v)
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return out


def _walk_ids(root) -> list[tuple[str, dict]]:
    """(identifier, Semantics node) in tree order, skipping invisible subtrees."""
    return [(v["identifier"], v) for v in _visible(root, "Semantics", "identifier")]


def _texts(root) -> list[str]:
    return [v["value"] for v in _visible(root, "Text", "value")]
