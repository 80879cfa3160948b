"""The news student's two encoders as ONNX graphs, with their contracts checked.

Graph contracts (dynamic axes are checked to be symbolic `dim_param`s in the written graphs):

    item encoder   tokens [items, tokens] int64 (0 = pad)          -> item_vectors [items, dim]
    user encoder   history_vecs [batch, history, dim] float32,
                   history_mask [batch, history] float32 (1 = real) -> user_vectors [batch, dim]

The click score is ``user . item``. Both graphs go through the dynamo exporter at opset 18
(`export.onnx.OPSET`, `export.onnx.write_graph`).
"""

from __future__ import annotations

import json
from pathlib import Path

from export.onnx import ExportError, describe, write_graph

__all__ = [
    "ITEM_INPUTS",
    "ITEM_OUTPUTS",
    "USER_INPUTS",
    "USER_OUTPUTS",
    "check_encoder_graph",
    "export_item_encoder",
    "export_user_encoder",
]

ITEM_INPUTS = ("tokens",)
ITEM_OUTPUTS = ("item_vectors",)
USER_INPUTS = ("history_vecs", "history_mask")
USER_OUTPUTS = ("user_vectors",)


def check_encoder_graph(model, inputs: dict, outputs: dict) -> dict[str, str]:
    """Raise `ExportError` unless the graph has exactly these inputs/outputs and axes.

    `inputs` / `outputs`: name -> axes, in graph order; an axis is a symbol name (the graph
    must have a `dim_param` there, one and the same `dim_param` wherever the symbol appears)
    or an int (the graph must have that fixed size). Returns symbol -> the graph's dim_param.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    info = describe(model)
    for kind, want in (("inputs", inputs), ("outputs", outputs)):
        names = tuple(v["name"] for v in info[kind])
        if names != tuple(want):
            raise ExportError(f"graph {kind} are {names}, expected {tuple(want)}")
    symbols: dict[str, set] = {}
    problems = []
    for vi in (*info["inputs"], *info["outputs"]):
        name, dims = vi["name"], vi["shape"]
        axes = inputs.get(name) or outputs.get(name)
        if len(dims) != len(axes):
            raise ExportError(f"{name!r} has rank {len(dims)} ({dims}), expected {axes}")
        for axis, (dim, sym) in enumerate(zip(dims, axes, strict=True)):
            if isinstance(sym, str):
                if not isinstance(dim, str):
                    problems.append(f"{name!r} axis {axis} ({sym}) is fixed at {dim}")
                else:
                    symbols.setdefault(sym, set()).add(dim)
            elif dim != sym:
                problems.append(f"{name!r} axis {axis} is {dim}, expected {sym}")
    if problems:
        raise ExportError("axes break the contract: " + "; ".join(problems))
    split = {s: sorted(v) for s, v in symbols.items() if len(v) != 1}
    if split:
        raise ExportError(f"one axis has different symbols across the graph: {split}")
    return {s: next(iter(v)) for s, v in symbols.items()}


def _export_graph(
    module,
    args: tuple,
    path: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_shapes: tuple,
    axes: tuple[dict, dict],
    meta: dict[str, str],
) -> dict:
    """Trace `module` on `args` to `path` with the encoder contract `axes` checked
    (`export.onnx.write_graph`); -> describe, plus the axes' symbols."""
    import torch

    stripped, symbols = write_graph(
        module,
        args,
        path,
        names,
        dynamic_shapes,
        lambda proto: check_encoder_graph(proto, *axes),
        meta,
    )
    info = describe(path)
    info["torch"] = torch.__version__
    info["debug_bytes_stripped"] = stripped
    info["symbols"] = symbols
    return info


def export_item_encoder(encoder, path: Path, config) -> dict:
    """The item encoder as ONNX: tokens [items, tokens] int64 -> item_vectors [items, dim]."""
    import torch
    from torch.export import Dim

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, config.vocab_size, (3, 5), generator=g)
    tokens[0, 3:] = 0  # ragged rows, as the catalog has
    tokens[2, 1:] = 0
    axes = ({"tokens": ("items", "tokens")}, {"item_vectors": ("items", config.dim)})
    meta = {
        "pocketrec.format": "pocketrec-news-item-encoder-onnx/1",
        "pocketrec.inputs": ",".join(ITEM_INPUTS),
        "pocketrec.outputs": ",".join(ITEM_OUTPUTS),
        "pocketrec.student_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    return _export_graph(
        encoder,
        (tokens,),
        path,
        (ITEM_INPUTS, ITEM_OUTPUTS),
        ({0: Dim("items"), 1: Dim("tokens")},),
        axes,
        meta,
    )


def export_user_encoder(encoder, path: Path, config) -> dict:
    """The user encoder as ONNX: history_vecs [batch, history, dim], history_mask
    [batch, history] float32 -> user_vectors [batch, dim]."""
    import torch
    from torch.export import Dim

    g = torch.Generator().manual_seed(1)
    vecs = torch.randn(3, 4, config.dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    batch, history = Dim("batch"), Dim("history")
    axes = (
        {
            "history_vecs": ("batch", "history", config.dim),
            "history_mask": ("batch", "history"),
        },
        {"user_vectors": ("batch", config.dim)},
    )
    meta = {
        "pocketrec.format": "pocketrec-news-user-encoder-onnx/1",
        "pocketrec.inputs": ",".join(USER_INPUTS),
        "pocketrec.outputs": ",".join(USER_OUTPUTS),
        "pocketrec.student_config": json.dumps(config.to_dict(), sort_keys=True),
    }
    return _export_graph(
        encoder,
        (vecs, mask),
        path,
        (USER_INPUTS, USER_OUTPUTS),
        ({0: batch, 1: history}, {0: batch, 1: history}),
        axes,
        meta,
    )
