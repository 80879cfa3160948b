"""Offline graph simplification of an exported student, before and after int8 quantisation.

At batch 1 a 0.3 M-parameter student is about a megaflop: its time in ONNX Runtime is the
per-node overhead (about 0.7 us a node on one thread here), so fewer nodes is what makes it
fast. These passes work on any graph the domains export (they match op patterns, not layer
names), each keeps the outputs (tests check them against the unsimplified graph), and each
returns how many nodes it changed:

- `fuse_gelu`: the exact Gelu the exporter writes below opset 20 (x * 0.5 * (1 + Erf(x /
  sqrt 2)), five nodes) -> one `com.microsoft.Gelu` (ORT's own GeluFusion misses the dynamo
  form). ORT's optimiser then folds the bias Add in front of it into `BiasGelu`.
- `simplify_reshapes`: a Reshape whose target shape is computed at run time (Shape -> Squeeze ->
  Add -> Concat ...) gets a constant target written with 0 (copy this axis) and -1, read off
  the symbolic shapes the exporter records; the shape arithmetic then dies.
- `merge_sibling_matmuls`: MatMuls reading the same activation with constant weights (the
  attention's q, k and v projections) -> one MatMul on the concatenated weights (and one bias
  Add) and a Split: per channel int8 scales stay the same, three products become one.
- `quantize_gathers`: an embedding table read by Gather -> 8-bit blocks (one scale per row and
  block of `block`), read by one `com.microsoft.GatherBlockQuantized` node instead of the
  Gather + DequantizeLinear pair of `quantize_dynamic` (one scale per table).
- `ort_optimize`: ONNX Runtime's own offline optimisation at ORT_ENABLE_EXTENDED (portable:
  no hardware-specific layouts), saved as a plain .onnx: after it, int8 products are
  `DynamicQuantizeMatMul` / `MatMulIntegerToFloat` with their bias inside and LayerNorm +
  residual is `SkipLayerNormalization`, so the session does no fusing at load.

The com.microsoft ops used are all in ONNX Runtime's default CPU build since well before 1.27
(checked by loading on onnxruntime 1.27.0, the mobile-forge recipe's version).
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

MS_DOMAIN = "com.microsoft"
SQRT2 = float(np.sqrt(2.0))


# --------------------------------------------------------------------------- helpers


class _Graph:
    """Producer/consumer maps and constant lookup over a graph (rebuilt after each pass)."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.consts: dict[str, np.ndarray] = {}
        for t in self.graph.initializer:
            if int(np.prod(t.dims, dtype=np.int64)) <= 16:
                self.consts[t.name] = numpy_helper.to_array(t)
        for n in self.graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.attribute:
                a = n.attribute[0]
                if a.name == "value":
                    self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in self.graph.output}

    def scalar(self, name: str) -> float | None:
        v = self.consts.get(name)
        if v is None or v.size != 1:
            return None
        return float(v.reshape(()))

    def only_consumer(self, name: str):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.outputs else None

    def dims(self) -> dict[str, list]:
        from export.onnx import value_dims

        vi = [*self.graph.value_info, *self.graph.input, *self.graph.output]
        return {v.name: value_dims(v) for v in vi if v.type.HasField("tensor_type")}


def _ensure_ms_opset(model) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.add(domain=MS_DOMAIN, version=1)


_TAKEN: dict[int, set] = {}


def _fresh(model, base: str) -> str:
    """A tensor/node name not used in `model` nor handed out before for it."""
    taken = _TAKEN.setdefault(id(model), set())
    taken |= {t.name for t in model.graph.initializer}
    taken |= {o for n in model.graph.node for o in n.output}
    taken |= {n.name for n in model.graph.node}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def eliminate_dead(model) -> int:
    """Drop nodes whose outputs nobody reads and initializers no node reads; returns nodes."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    removed = len(graph.node) - len(keep)
    if removed:
        graph.ClearField("node")
        graph.node.extend(reversed(keep))
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    if len(inits) != len(graph.initializer):
        graph.ClearField("initializer")
        graph.initializer.extend(inits)
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    vi = [v for v in graph.value_info if v.name in names]
    if len(vi) != len(graph.value_info):
        graph.ClearField("value_info")
        graph.value_info.extend(vi)
    return removed


def _replace(model, drop: set, add: dict) -> None:
    """Rebuild the node list without the nodes in `drop` (by id), inserting `add[id(node)]`
    (a list of new nodes) where that node stood."""
    nodes = []
    for n in model.graph.node:
        if id(n) in add:
            nodes.extend(add[id(n)])
        if id(n) not in drop:
            nodes.append(n)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)


# --------------------------------------------------------------------------- passes


def fuse_gelu(model) -> int:
    """x * (0.5 * (1 + Erf(x / sqrt2))) in any operand order (also x * 0.5 first, and
    x * (1/sqrt2) for the division) -> com.microsoft.Gelu(x). Returns Gelus fused."""
    from onnx import helper

    g = _Graph(model)
    drop, add, fused = set(), {}, 0

    def other(node, name):
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    for erf in list(model.graph.node):
        if erf.op_type != "Erf" or id(erf) in drop:
            continue
        scale = g.producer.get(erf.input[0])
        if scale is None or scale.op_type not in ("Div", "Mul"):
            continue
        x = scale.input[0]
        c = g.scalar(scale.input[1])
        if c is None or not np.isclose(c, SQRT2 if scale.op_type == "Div" else 1 / SQRT2, 1e-5):
            continue
        add1 = g.only_consumer(erf.output[0])
        if add1 is None or add1.op_type != "Add":
            continue
        if g.scalar(other(add1, erf.output[0]) or "") != 1.0:
            continue
        m1 = g.only_consumer(add1.output[0])
        if m1 is None or m1.op_type != "Mul":
            continue
        o1 = other(m1, add1.output[0])
        chain = [scale, erf, add1, m1]
        if g.scalar(o1 or "") == 0.5:  # 0.5 * (1 + erf), then * x
            m2 = g.only_consumer(m1.output[0])
            if m2 is None or m2.op_type != "Mul" or other(m2, m1.output[0]) != x:
                continue
            chain.append(m2)
        elif o1 == x:  # x * (1 + erf), then * 0.5
            m2 = g.only_consumer(m1.output[0])
            if m2 is None or m2.op_type != "Mul" or g.scalar(other(m2, m1.output[0]) or "") != 0.5:
                continue
            chain.append(m2)
        else:
            continue
        # the inner values must not be read elsewhere (x is, by the scale and the last Mul)
        if any(g.only_consumer(n.output[0]) is None for n in chain[:-1]):
            continue
        out = chain[-1].output[0]
        gelu = helper.make_node(
            "Gelu", [x], [out], name=_fresh(model, f"{erf.name or 'gelu'}_fused"), domain=MS_DOMAIN
        )
        drop.update(id(n) for n in chain)
        add[id(chain[-1])] = [gelu]
        fused += 1
    if fused:
        _replace(model, drop, add)
        _ensure_ms_opset(model)
        eliminate_dead(model)
    return fused


def nonzero_as_cast(model) -> int:
    """Not(Equal(x, 0)) on an integer x (the padding masks) -> Cast(x, to=bool): one node
    instead of two, the same truth table. Returns masks rewritten."""
    from onnx import TensorProto, helper

    g = _Graph(model)
    dims_types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*model.graph.value_info, *model.graph.input)
        if v.type.HasField("tensor_type")
    }
    ints = {
        TensorProto.INT64,
        TensorProto.INT32,
        TensorProto.INT16,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.UINT16,
        TensorProto.UINT32,
        TensorProto.UINT64,
    }
    drop, add, done = set(), {}, 0
    for eq in model.graph.node:
        if eq.op_type != "Equal" or eq.domain not in ("", "ai.onnx"):
            continue
        zero = [i for i in eq.input if g.scalar(i) == 0.0 and i in g.consts]
        if len(zero) != 1:
            continue
        x = next(i for i in eq.input if i != zero[0])
        if dims_types.get(x) not in ints:
            continue
        nots = g.consumers.get(eq.output[0], [])
        if len(nots) != 1 or nots[0].op_type != "Not" or eq.output[0] in g.outputs:
            continue
        cast = helper.make_node(
            "Cast",
            [x],
            [nots[0].output[0]],
            name=_fresh(model, f"{eq.name or 'mask'}_nonzero"),
            to=TensorProto.BOOL,
        )
        drop.update((id(eq), id(nots[0])))
        add[id(nots[0])] = [cast]
        done += 1
    if done:
        _replace(model, drop, add)
        eliminate_dead(model)
    return done


def simplify_reshapes(model) -> int:
    """Reshape(x, <computed shape>) -> Reshape(x, <constant with 0 and -1>) where the
    exporter's symbolic shapes of x and of the result say which axes are copied. Returns
    Reshapes rewritten."""
    from onnx import numpy_helper

    g = _Graph(model)
    dims = g.dims()
    done = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in g.inits:
            continue
        src, out = dims.get(node.input[0]), dims.get(node.output[0])
        if not src or not out or any(d is None for d in (*src, *out)):
            continue
        target = []
        for i, d in enumerate(out):
            if isinstance(d, int) and d > 0:
                target.append(d)
            elif i < len(src) and d == src[i]:
                target.append(0)
            else:
                target.append(-1)
        if target.count(-1) > 1:
            continue
        name = _fresh(model, f"{node.name or 'reshape'}_shape")
        model.graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        node.input[1] = name
        # 0 now means "copy this axis" (allowzero=1 would read it as a literal 0); the
        # rewrite differs from the original only for an empty axis, which -1 cannot take anyway
        for a in node.attribute:
            if a.name == "allowzero":
                a.i = 0
        done += 1
    if done:
        eliminate_dead(model)
    return done


def merge_sibling_matmuls(model) -> int:
    """MatMuls that read the same activation with 2-D constant weights of one K (each maybe
    followed by an Add of a constant 1-D bias) -> one MatMul (+ one Add) and a Split on the
    last axis. Returns MatMuls merged away."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    groups: dict[str, list] = defaultdict(list)
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and n.input[1] in g.inits:
            if len(g.inits[n.input[1]].dims) == 2:
                groups[n.input[0]].append(n)
    drop, add, merged = set(), {}, 0
    for act, mms in groups.items():
        if len(mms) < 2:
            continue
        ws = [numpy_helper.to_array(g.inits[m.input[1]]) for m in mms]
        if len({w.shape[0] for w in ws}) != 1 or len({w.dtype for w in ws}) != 1:
            continue
        biases, adds = [], []
        for m in mms:
            a = g.only_consumer(m.output[0])
            b = None
            if a is not None and a.op_type == "Add":
                bname = next((i for i in a.input if i != m.output[0]), None)
                if bname in g.inits and len(g.inits[bname].dims) == 1:
                    b = numpy_helper.to_array(g.inits[bname])
            biases.append(b)
            adds.append(a if b is not None else None)
        with_bias = all(b is not None for b in biases)
        if not with_bias and any(b is not None for b in biases):
            adds = [None] * len(mms)  # mixed: merge the products only
        w = np.concatenate(ws, axis=1)
        wname = _fresh(model, f"{mms[0].input[1]}_merged")
        model.graph.initializer.append(numpy_helper.from_array(w, wname))
        prod = _fresh(model, f"{mms[0].output[0]}_merged")
        new = [helper.make_node("MatMul", [act, wname], [prod], name=_fresh(model, "merged_mm"))]
        if with_bias:
            bname = _fresh(model, f"{wname}_bias")
            model.graph.initializer.append(numpy_helper.from_array(np.concatenate(biases), bname))
            summed = _fresh(model, f"{prod}_bias")
            new.append(helper.make_node("Add", [prod, bname], [summed], name=summed))
            prod = summed
        outs = [(a.output[0] if with_bias else m.output[0]) for m, a in zip(mms, adds, strict=True)]
        sname = _fresh(model, f"{wname}_split")
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([x.shape[1] for x in ws], np.int64), sname)
        )
        new.append(
            helper.make_node(
                "Split", [prod, sname], outs, name=_fresh(model, "merged_split"), axis=-1
            )
        )
        # insert where the first of the group stood (its input is ready there)
        first = min(mms, key=lambda m: list(model.graph.node).index(m))
        add[id(first)] = new
        drop.update(id(m) for m in mms)
        if with_bias:
            drop.update(id(a) for a in adds)
        merged += len(mms) - 1
    if merged:
        _replace(model, drop, add)
        _toposort(model)
        eliminate_dead(model)
    return merged


def _toposort(model) -> None:
    graph = model.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or an undefined input")
        pending = rest
    graph.ClearField("node")
    graph.node.extend(order)


def quantize_gathers(model, block: int = 32, min_rows: int = 2) -> int:
    """Gather(float table, ids) on axis 0 of a 2-D constant table -> GatherBlockQuantized with
    uint8 data, one symmetric scale per row and `block` columns (zero point 128). Returns
    Gathers quantized. Tables whose width is not a multiple of 16 are left alone."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(model)
    done, tables = 0, {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        t = g.inits.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if t is None or axis != 0 or len(t.dims) != 2 or t.data_type != TensorProto.FLOAT:
            continue
        rows, width = int(t.dims[0]), int(t.dims[1])
        bs = block
        while bs > 16 and width % bs:
            bs //= 2
        if rows < min_rows or width % bs or bs < 16:
            continue
        if t.name not in tables:
            w = numpy_helper.to_array(t).astype(np.float64)
            blocks = w.reshape(rows, width // bs, bs)
            scale = np.abs(blocks).max(axis=2) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128
            qname = _fresh(model, f"{t.name}_q8")
            sname = _fresh(model, f"{t.name}_q8_scale")
            model.graph.initializer.append(
                numpy_helper.from_array(q.reshape(rows, width).astype(np.uint8), qname)
            )
            model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), sname))
            tables[t.name] = (qname, sname, bs)
        qname, sname, bs = tables[t.name]
        new = helper.make_node(
            "GatherBlockQuantized",
            [qname, node.input[1], sname],
            list(node.output),
            name=node.name,
            domain=MS_DOMAIN,
            bits=8,
            block_size=bs,
            gather_axis=0,
            quantize_axis=1,
        )
        node.CopyFrom(new)
        done += 1
    if done:
        _ensure_ms_opset(model)
        eliminate_dead(model)
    return done


def ort_optimize(src: Path, dst: Path) -> None:
    """ONNX Runtime's offline optimisation of `src` at ORT_ENABLE_EXTENDED, saved to `dst`
    (an .onnx file) with only the opsets it uses."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    prune_opsets(model)
    onnx.save(model, str(dst))


def prune_opsets(model) -> None:
    """Keep only the opset imports the graph's nodes use (ORT's saver lists every domain)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def simplify(model) -> dict[str, int]:
    """The fp32 passes, in order, in place; returns what each changed."""
    # names handed out are remembered by id(model): start and end clean, or a later model
    # that reuses a freed model's id would get other names (and a different file)
    _TAKEN.pop(id(model), None)
    try:
        return {
            "gelu_fused": fuse_gelu(model),
            "reshapes_constant": simplify_reshapes(model),
            "masks_as_cast": nonzero_as_cast(model),
            "matmuls_merged": merge_sibling_matmuls(model),
            "dead_nodes": eliminate_dead(model),
        }
    finally:
        _TAKEN.pop(id(model), None)


def optimize_file(src: Path, dst: Path, passes: bool = True) -> dict:
    """`simplify` (when `passes`) and `ort_optimize` from the file `src` to `dst`; returns
    node counts before/after and what each pass changed."""
    import onnx

    model = onnx.load(str(src))
    before = len(model.graph.node)
    changed = simplify(model) if passes else {}
    with tempfile.TemporaryDirectory(prefix=".optimize.", dir=Path(dst).parent) as tmp:
        mid = Path(tmp) / "simplified.onnx"
        onnx.save(model, str(mid))
        ort_optimize(mid, dst)
    after = onnx.load(str(dst))
    return {
        "nodes_before": before,
        "nodes_after": len(after.graph.node),
        "passes": changed,
        "ops": dict(sorted(Counter(n.op_type for n in after.graph.node).items())),
    }
