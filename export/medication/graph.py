"""The medication student as one self-contained ONNX file, with dynamic batch, visit and code
axes (`export_student`; the tracing and checking machinery is `export.onnx.write_graph`).

Graph contract (what the app feeds and reads; see `contract.layout`):

    inputs   dx [batch, visits, n_dx], px [batch, visits, n_px], med [batch, visits, n_med]
             int64; visit_mask [batch, visits] float32; profile [batch, n_profile] int64
    outputs  logits [batch, n_labels], features [batch, dim]   float32
"""

from __future__ import annotations

import json
from pathlib import Path

from contract.layout import INPUT_NAMES, OUTPUT_NAMES
from export.onnx import OPSET, ExportError, describe, value_dims, write_graph

# the symbolic name of every axis of every input, in axis order: all of them are dynamic
AXES: dict[str, tuple[str, ...]] = {
    "dx": ("batch", "visits", "n_dx"),
    "px": ("batch", "visits", "n_px"),
    "med": ("batch", "visits", "n_med"),
    "visit_mask": ("batch", "visits"),
    "profile": ("batch", "n_profile"),
}
# axes shared by several inputs: each must be one and the same symbol everywhere
SHARED_AXES = ("batch", "visits")


def example_inputs(
    config, batch: int = 3, visits: int = 4, seed: int = 0, codes: tuple | None = None
) -> tuple:
    """A deterministic random batch in `INPUT_NAMES` order: ragged visits, some pads.

    `codes`: the (n_dx, n_px, n_med, n_profile) axis sizes; by default distinct from each
    other and from `batch`/`visits`, so a tracer can neither mistake two axes for one symbol
    nor specialise one to 1 (`export_student` also wants batch, visits >= 2).
    """
    import torch

    if batch < 1 or visits < 1:
        raise ValueError(f"batch and visits must be >= 1 (got {batch}, {visits})")
    base = max(batch, visits)
    n_dx, n_px, n_med, n_profile = codes or (base + 1, base + 2, base + 3, base + 4)
    g = torch.Generator().manual_seed(seed)

    def ids(vocab: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, vocab, shape, generator=g)  # 1 = <unk>: any id is valid

    dx = ids(config.n_diagnoses, batch, visits, n_dx)
    px = ids(config.n_procedures, batch, visits, n_px)
    med = ids(config.n_medications, batch, visits, n_med)
    profile = ids(config.n_profile, batch, n_profile)
    # 1..visits visits per patient, right-aligned; random pads inside each code set
    n_visits = torch.randint(1, visits + 1, (batch,), generator=g)
    slots = torch.arange(visits).expand(batch, visits)
    visit_mask = (slots >= (visits - n_visits)[:, None]).to(torch.float32)
    keep = visit_mask.long()[..., None]
    dx = dx * keep * (torch.rand(dx.shape, generator=g) > 0.3)
    dx[..., 0] = ids(config.n_diagnoses, batch, visits) * keep[..., 0]  # >= 1 diagnosis
    px = px * keep * (torch.rand(px.shape, generator=g) > 0.5)
    med = med * keep * (torch.rand(med.shape, generator=g) > 0.3)
    med[:, -1] = 0  # the current visit's drugs are the answer
    profile = profile * (torch.rand(profile.shape, generator=g) > 0.2)
    return dx, px, med, visit_mask, profile


def dynamic_shapes() -> tuple[dict, ...]:
    """`torch.export` dims for the inputs, in `INPUT_NAMES` order; shared names = same symbol."""
    from torch.export import Dim

    dims: dict[str, object] = {}
    out = []
    for name in INPUT_NAMES:
        spec = {}
        for axis, sym in enumerate(AXES[name]):
            if sym not in dims:
                dims[sym] = Dim(sym)
            spec[axis] = dims[sym]
        out.append(spec)
    return tuple(out)


def check_graph(model) -> None:
    """Raise `ExportError` unless the graph has the contract's names and symbolic axes.

    `model`: an `onnx.ModelProto` or a path. Checks input/output names and order, ranks, and
    that every axis in `AXES` (batch, visits and the code axes) is a `dim_param` -- a
    `dim_value` means the tracer froze it to the example size -- and that the batch axis of
    both outputs is symbolic too.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    names = tuple(i.name for i in graph.input)
    if names != INPUT_NAMES:
        raise ExportError(f"graph inputs are {names}, expected {INPUT_NAMES}")
    out_names = tuple(o.name for o in graph.output)
    if out_names != OUTPUT_NAMES:
        raise ExportError(f"graph outputs are {out_names}, expected {OUTPUT_NAMES}")

    frozen = []  # (axis symbol, description)
    for vi in graph.input:
        dims, axes = value_dims(vi), AXES[vi.name]
        if len(dims) != len(axes):
            raise ExportError(
                f"input {vi.name!r} has rank {len(dims)} ({dims}), expected {len(axes)} {axes}"
            )
        for axis, (dim, sym) in enumerate(zip(dims, axes, strict=True)):
            if not isinstance(dim, str):
                frozen.append((sym, f"input {vi.name!r} axis {axis} ({sym}) is fixed at {dim}"))
    for vi in graph.output:
        dims = value_dims(vi)
        if len(dims) != 2:
            raise ExportError(f"output {vi.name!r} has rank {len(dims)} ({dims}), expected 2")
        if not isinstance(dims[0], str):
            frozen.append(("batch", f"output {vi.name!r} axis 0 (batch) is fixed at {dims[0]}"))
    if frozen:
        syms = sorted({sym for sym, _ in frozen})
        raise ExportError(
            f"frozen axes {syms}: every axis must be symbolic (dim_param), "
            + "; ".join(text for _, text in frozen)
        )

    # the same symbol everywhere: one batch, one visit count
    for sym in SHARED_AXES:
        seen = {
            value_dims(vi)[AXES[vi.name].index(sym)] for vi in graph.input if sym in AXES[vi.name]
        }
        if len(seen) != 1:
            raise ExportError(f"the {sym} axis has different symbols across inputs: {sorted(seen)}")


def export_student(
    model,
    config,
    path: Path,
    opset: int = OPSET,
    example_batch: int = 3,
    example_visits: int = 4,
) -> dict:
    """Export `model` (a `LeaderStudent`, or anything with its forward) to `path`.

    The model is traced in eval mode on its own device (its training flag is restored
    afterwards), with `example_inputs(config, example_batch, example_visits)`.
    Raises `ExportError` if the exporter fails or the graph breaks the contract (nothing is
    written to `path` then). Returns `describe(...)` of the written file plus the student
    config and the example sizes traced with.
    """
    import torch

    if example_batch < 2 or example_visits < 2:
        raise ValueError(
            f"example sizes must be >= 2 so no axis is specialised to 1 "
            f"(got batch={example_batch}, visits={example_visits})"
        )
    path = Path(path)
    args = example_inputs(config, example_batch, example_visits)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args = tuple(a.to(device) for a in args)
    meta = {
        "pocketrec.format": "pocketrec-leader-student-onnx/1",
        "pocketrec.inputs": ",".join(INPUT_NAMES),
        "pocketrec.outputs": ",".join(OUTPUT_NAMES),
    }
    if hasattr(config, "to_dict"):
        meta["pocketrec.student_config"] = json.dumps(config.to_dict(), sort_keys=True)
    stripped, _ = write_graph(
        model,
        args,
        path,
        (INPUT_NAMES, OUTPUT_NAMES),
        dynamic_shapes(),
        check_graph,
        meta,
        opset,
    )

    info = describe(path)
    info["torch"] = torch.__version__
    info["debug_bytes_stripped"] = stripped
    info["example_sizes"] = {"batch": example_batch, "visits": example_visits}
    if hasattr(config, "to_dict"):
        info["student_config"] = config.to_dict()
    return info
