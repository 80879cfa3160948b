"""Writing a torch module as one checked ONNX file: the pieces both domains' exports share.

`write_graph` traces a module with the dynamo exporter (`torch.export` underneath), writes the
graph to a temporary file beside the target, checks it (the caller's graph contract, then ONNX's
full checker), strips the exporter's debug info, stamps metadata on it and renames it into
place, so a reader never sees a half-written or unchecked model. `describe` summarises a graph
for manifests. The domain graphs and their contracts live in `export.medication.graph` and
`export.news.graphs`.

Opset: `OPSET` = 18, the lowest opset torch's ONNX translation library emits natively (torch
2.13); it exports, runs in onnxruntime and matches torch to ~1e-6. Gelu does not need opset 20:
below 20 the exporter writes the exact form 0.5 * x * (1 + Erf(x / sqrt 2)). Asking for 17
works only through a best-effort down-conversion (the onnxscript converter gives up and the
onnx C API converter is used); asking for 16 fails to convert (no LayerNormalization before
17) and the exporter silently keeps opset 18 -- `write_graph` checks the written opset.
Checked by hand: ONNX Runtime 1.27.0 runs the opset-18 fp32 graph and its int8 versions
(fp32 logits within 2e-7 of ORT 1.32's).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.files import atomic_path

OPSET = 18


class ExportError(RuntimeError):
    """An exported graph breaks its contract (a frozen axis, wrong names, ...)."""


def value_dims(value_info) -> list:
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
        "inputs": [
            {"name": i.name, "dtype": _dtype(i), "shape": value_dims(i)} for i in graph.input
        ],
        "outputs": [
            {"name": o.name, "dtype": _dtype(o), "shape": value_dims(o)} for o in graph.output
        ],
        "ops": dict(sorted(Counter(n.op_type for n in graph.node).items())),
        "n_initializers": len(graph.initializer),
    }
    if path is not None:
        data = Path(path).read_bytes()
        info["file"] = Path(path).name  # no absolute paths: this goes into manifests
        info["bytes"] = len(data)
        info["sha256"] = hashlib.sha256(data).hexdigest()
    return info


def model_entry(info: dict, qinfo: dict, file: str | None = None) -> dict:
    """A bundle manifest's entry for one int8 graph: `describe`'s summary of its fp32 graph
    (`info`) and the quantisation record (`qinfo`), with the file name where given."""
    entry = {"file": file} if file is not None else {}
    entry.update(
        opset=info["opset"],
        inputs=[i["name"] for i in info["inputs"]],
        outputs=[o["name"] for o in info["outputs"]],
        input_specs=info["inputs"],
        output_specs=info["outputs"],
        ops=info.get("ops"),
        fp32_bytes=info.get("bytes"),
        quantization=qinfo,
    )
    return entry


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

    was_training = module.training
    with atomic_path(path) as tmp:
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
    return stripped, checked
