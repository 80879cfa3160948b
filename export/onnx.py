"""The student as one self-contained ONNX file, with dynamic batch, visit and code axes.

`export_student` traces the model with the dynamo exporter (`torch.export` underneath), writes
the graph to a temporary file beside the target, checks it, stamps a little metadata on it and
renames it into place, so a reader never sees a half-written or unchecked model.

Graph contract (what the app feeds and reads; see `distill.data.tensors`):

    inputs   dx [batch, visits, n_dx], px [batch, visits, n_px], med [batch, visits, n_med]
             int64; visit_mask [batch, visits] float32; profile [batch, n_profile] int64
    outputs  logits [batch, n_labels], features [batch, dim]   float32

Opset: `OPSET` = 18, the lowest opset torch's ONNX translation library emits natively (torch
2.13); it exports, runs in onnxruntime and matches torch to ~1e-6. Gelu does not need opset 20:
below 20 the exporter writes the exact form 0.5 * x * (1 + Erf(x / sqrt 2)). Asking for 17
works only through a best-effort down-conversion (the onnxscript converter gives up and the
onnx C API converter is used); asking for 16 fails to convert (no LayerNormalization before
17) and the exporter silently keeps opset 18 -- `export_student` checks the written opset.
Checked by hand: ONNX Runtime 1.27.0 runs the opset-18 fp32 graph and its int8 versions
(fp32 logits within 2e-7 of ORT 1.32's).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.data.tensors import INPUT_NAMES

OPSET = 18
OUTPUT_NAMES = ("logits", "features")

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


class ExportError(RuntimeError):
    """The exported graph breaks the contract above (a frozen axis, wrong names, ...)."""


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


def _dims(value_info) -> list:
    """[dim_param or dim_value or None] of a graph input/output."""
    shape = value_info.type.tensor_type.shape
    out = []
    for d in shape.dim:
        if d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        elif d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(None)
    return out


def _dtype(value_info) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


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
        dims, axes = _dims(vi), AXES[vi.name]
        if len(dims) != len(axes):
            raise ExportError(
                f"input {vi.name!r} has rank {len(dims)} ({dims}), expected {len(axes)} {axes}"
            )
        for axis, (dim, sym) in enumerate(zip(dims, axes, strict=True)):
            if not isinstance(dim, str):
                frozen.append((sym, f"input {vi.name!r} axis {axis} ({sym}) is fixed at {dim}"))
    for vi in graph.output:
        dims = _dims(vi)
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
        seen = {_dims(vi)[AXES[vi.name].index(sym)] for vi in graph.input if sym in AXES[vi.name]}
        if len(seen) != 1:
            raise ExportError(f"the {sym} axis has different symbols across inputs: {sorted(seen)}")


def describe(model, path: Path | None = None) -> dict:
    """JSON-able summary of a graph: opset, inputs, outputs, op counts (+ size, sha256)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    info = {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": int(model.ir_version),
        "inputs": [{"name": i.name, "dtype": _dtype(i), "shape": _dims(i)} for i in graph.input],
        "outputs": [{"name": o.name, "dtype": _dtype(o), "shape": _dims(o)} for o in graph.output],
        "ops": dict(sorted(Counter(n.op_type for n in graph.node).items())),
        "n_initializers": len(graph.initializer),
    }
    if path is not None:
        data = Path(path).read_bytes()
        info["file"] = Path(path).name  # no absolute paths: this goes into manifests
        info["bytes"] = len(data)
        info["sha256"] = hashlib.sha256(data).hexdigest()
    return info


def strip_debug_info(model) -> int:
    """Drop the exporter's per-node debug metadata in place; returns the bytes saved.

    torch writes each node's Python stack trace (with absolute source paths of the build
    machine), module class hierarchy and FX node text into `metadata_props`: ~150 KB for a
    dim-64 student, a third of the int8 file, and nothing a runtime reads.
    """
    before = model.ByteSize()
    graph = model.graph
    for item in (*graph.node, *graph.value_info, *graph.initializer, *graph.input, *graph.output):
        del item.metadata_props[:]
        item.doc_string = ""
    del graph.metadata_props[:]
    graph.doc_string = ""
    model.doc_string = ""
    return before - model.ByteSize()


@contextlib.contextmanager
def quiet_exporter():
    """The exporter chats on stdout, logs about torchvision and warns about axis renaming."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _trace(module, args: tuple, path: Path, opset: int, names: tuple, dynamic: tuple) -> None:
    """torch -> ONNX file at `path` (one file: weights inside), quietly."""
    import torch

    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic,
            input_names=list(names[0]),
            output_names=list(names[1]),
            opset_version=opset,
            verbose=False,
        )


def write_graph(
    module,
    args: tuple,
    path: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic: tuple,
    check: Callable[[Any], Any],
    meta: dict[str, str],
    opset: int = OPSET,
) -> tuple[int, Any]:
    """Trace `module` on `args` into the ONNX file `path`, or raise `ExportError` and write
    nothing: the dynamo exporter (quiet, eval mode, the module's training flag restored) writes
    a temporary sibling, which must come out at `opset`, pass `check(proto)` (the caller's graph
    contract) and ONNX's full checker; then its debug info is stripped, `meta` becomes its
    metadata, and it is renamed into place. Returns (debug bytes stripped, what `check`
    returned). `names`: (input names, output names); `dynamic`: `dynamic_shapes` for the export.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    was_training = module.training
    try:
        module.eval()
        try:
            _trace(module, args, tmp, opset, names, dynamic)
        except Exception as e:  # the exporter raises many types; keep the cause chained
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
        finally:
            module.train(was_training)

        proto = onnx.load(str(tmp))
        got_opset = describe(proto)["opset"]
        if got_opset != opset:
            # the exporter down-converts below its native opset on a best-effort basis and
            # keeps the original graph when that fails (e.g. LayerNormalization below 17)
            raise ExportError(f"asked for opset {opset}, the exporter wrote opset {got_opset}")
        checked = check(proto)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported graph is not valid ONNX: {e}") from e
        stripped = strip_debug_info(proto)
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stripped, checked


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
