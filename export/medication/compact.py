"""The medication student written straight as a compact ONNX graph from its weights.

At batch 1 a 0.37 M-parameter student is a fraction of a megaflop: its time in ONNX Runtime is
per-node overhead, and the graph the torch exporter writes has ~190 nodes (~155 after
`export.optimize`). This module computes the same function as
`distill.medication.student.LeaderStudent.forward` (eval mode) in ~65 nodes, by rewriting it
with algebra that holds for every input, not by changing the model:

- a code set's masked mean followed by a Linear layer is the masked mean of the rows of
  (embedding @ W^T): each kind (diagnoses, procedures, medications, profile) gets its own
  product table, whose pad row (id 0) is zero and whose last column is 1, so one Gather and one
  ReduceSum give both the sum and the count (no mask, no offset Add, no per-set MatMul);
- the wide path's tables get zero pad rows too (no mask), and the profile's wide rows sit in the
  profile table beside its embedding product (one Gather for both);
- the slot embedding and the visit projection's bias are one table indexed by the distance
  from the current visit (CumSum over the visit axis, clamped);
- each attention layer is one `com.microsoft.Attention` (q, k, v, scale, the -1e4 key mask and
  softmax), each residual + LayerNorm one `SkipLayerNormalization`, each bias + exact GELU one
  `BiasGelu`; the final LayerNorm is fused into the last block's residual;
- the logits of the head, the wide path and the repeat head are added by one `Sum`.

The graph contract is `export.medication.graph`'s (same input and output names, every axis
dynamic); `check_graph` is run on the result. The com.microsoft ops used are in ONNX Runtime's
default CPU build (the quantized student already needed the domain).

`build_graph(state, config)` is the fp32 graph. `pocketrec export` ships it as an int8 file in
one of two forms (`export_compact` writes the fp32 graph and the int8 file):

- "weights" (the default, `weights_only`): the fp32 graph with every table and weight matrix
  stored 8-bit, one scale per column (integer columns exact), restored by a Cast and a Mul on
  the initializers, which ONNX Runtime folds when the session is made: a quarter of the fp32
  file, and the session then runs the fp32 graph (same speed, float accuracy but for the 8-bit
  rounding of the weights);
- "dynamic" (`build_graph(state, config, preset)`): every table 8-bit with one scale per column,
  summed as integers and scaled after the sum (the count columns and the repeat head's 0/1
  table exact; the wide tables share one scale per label, applied once to the logits), and
  every dense product an integer one (`DynamicQuantizeMatMul`, `QAttention`: int8 weights per
  output channel, activations quantized per call); see `export.graph_builder`.
  `products="fp32"` keeps the dense products in fp32 (8-bit tables only), for measurements.

Measured (bench/latency.py and bench/int8_crossover.py, one thread, batch 1): at the shipped
width (32) an integer product costs more than the float one it replaces (the activation's
quantisation is a fixed cost) and an 8-bit table read needs a conversion node, so the
"dynamic" file is 16-17% slower than the fp32 graph, and "weights" runs at the fp32 graph's
speed; integer products pay from width 128 (about 0.9x the fp32 time there, 0.57x at 256), and
width 32 is the best on validation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from contract.layout import INPUT_NAMES, LABEL_OFFSET
from export.graph_builder import (
    MS_DOMAIN,
    PRODUCTS,
    GraphBuilder,
    Weights,
    column_int8,
    is_weight_matrix,
    symmetric,
)
from export.onnx import OPSET

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the student uses
INT64_MAX = np.iinfo(np.int64).max
FORMAT = "pocketrec-leader-student-compact/1"
# the int8 file's forms: "weights" (8-bit storage, restored to float when the session is made;
# what `pocketrec export` ships) and "dynamic" (8-bit tables summed as integers, integer dense
# products with activations quantised per call)
INT8_FORMS = ("weights", "dynamic")
# the weights form stores 2-D float initializers of at least this many values in 8 bits; 1-D
# ones (biases, norms, scales) and small matrices stay float: they are a few KB together
WEIGHT_MIN_ELEMENTS = 1024

__all__ = [
    "FORMAT",
    "INT8_FORMS",
    "PRODUCTS",
    "build_graph",
    "compact_tables",
    "export_compact",
    "save_graph",
    "state_of",
    "weights_only",
]


def state_of(model) -> dict[str, np.ndarray]:
    """A torch module's state dict as float64 numpy arrays (the builder's input)."""
    return {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}


def _cfg(config, name: str, default=None):
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def compact_tables(state: Mapping[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """The precomputed tables of the compact form (float64), from a student state dict.

    dx, px, med: [n_kind, D + 1] = [embedding @ W_set^T, 1], row 0 (pad) zero;
    profile: [n_profile, D + 1 (+ L)] = [embedding @ W_proj^T, 1 (, wide rows)], row 0 zero;
    wide_dx, wide_px, wide_med: [n_kind, L] the wide rows, row 0 zero (with `wide`);
    med_to_label: [n_medications, L] 0/1 (with `repeat_head`);
    slot: [max_visits, D] = slot embedding + visit projection bias.
    """
    n = {
        "dx": int(_cfg(config, "n_diagnoses")),
        "px": int(_cfg(config, "n_procedures")),
        "med": int(_cfg(config, "n_medications")),
        "profile": int(_cfg(config, "n_profile")),
    }
    n_labels = int(_cfg(config, "n_labels"))
    wide = "wide.weight" in state
    embed = np.asarray(state["embed.weight"], np.float64)
    out: dict[str, np.ndarray] = {}
    start = 0
    layers = {"dx": "dx_set.0", "px": "px_set.0", "med": "med_set.0", "profile": "profile_proj"}
    for kind in ("dx", "px", "med", "profile"):
        rows = slice(start, start + n[kind])
        w = np.asarray(state[f"{layers[kind]}.weight"], np.float64)
        parts = [embed[rows] @ w.T, np.ones((n[kind], 1))]
        if wide:
            wide_rows = np.asarray(state["wide.weight"], np.float64)[rows].copy()
            wide_rows[0] = 0.0
            if kind == "profile":
                parts.append(wide_rows)
            else:
                out[f"wide_{kind}"] = wide_rows
        table = np.concatenate(parts, axis=1)
        table[0] = 0.0  # pad: contributes nothing, counts nothing
        out[kind] = table
        start += n[kind]
    if "repeat_last" in state:
        table = np.zeros((n["med"], n_labels))
        k = min(n["med"] - LABEL_OFFSET, n_labels)
        table[LABEL_OFFSET + np.arange(k), np.arange(k)] = 1.0
        out["med_to_label"] = table
    out["slot"] = np.asarray(state["slot_embed.weight"], np.float64) + np.asarray(
        state["visit_proj.bias"], np.float64
    )
    return out


def build_graph(
    state: Mapping[str, np.ndarray],
    config,
    preset=None,
    products: str = "dynamic",
    opset: int = OPSET,
    with_features: bool = True,
):
    """The student (state dict `state`, config `config`: a `StudentConfig` or its dict) as a
    compact ONNX `ModelProto`: fp32 when `preset` is None, else 8-bit tables and (with
    `products="dynamic"`) int8 dense products per the `export.quantize.QuantizationPreset`.
    `with_features`: also output `features` (the graph contract's second output)."""
    import onnx
    from onnx import TensorProto, helper

    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}; got {products!r}")
    d = int(_cfg(config, "dim"))
    heads = int(_cfg(config, "heads"))
    layers = int(_cfg(config, "visit_layers"))
    n_labels = int(_cfg(config, "n_labels"))
    max_visits = int(_cfg(config, "max_visits"))
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    tables = compact_tables(s, config)
    wide = "wide_dx" in tables
    wide_codes = _cfg(config, "wide_codes", "sum")
    if wide_codes not in ("sum", "sqrt", "mean"):
        raise ValueError(f"wide_codes must be 'sum', 'sqrt' or 'mean'; got {wide_codes!r}")
    # "sqrt" / "mean": the current visit's wide rows summed, times (this scale / n)^(1/2 or 1)
    wide_mean = float(_cfg(config, "wide_codes_scale", 1.0)) if wide_codes != "sum" else 0.0
    wide_sqrt = wide_codes == "sqrt"
    repeat = "med_to_label" in tables

    g = GraphBuilder()
    wq = Weights(g, preset, products)
    f32 = np.float32
    q8 = preset is not None
    # 8-bit wide tables share one scale per label (column), so their integer sums add up
    # and are scaled once, with the other logits divided by it beforehand (`logit_unit`)
    wide_scale = None
    logit_unit = np.ones(n_labels)
    if q8 and wide:
        every = np.concatenate(
            [tables[f"wide_{k}"] for k in ("dx", "px", "med")] + [tables["profile"][:, d + 1 :]]
        )
        wide_scale = symmetric(every, axis=1)[1].astype(np.float64)
        logit_unit = wide_scale

    def lin(name: str) -> tuple[np.ndarray, np.ndarray]:
        return s[f"{name}.weight"].T, s[f"{name}.bias"]

    one = g.const("one", 1.0, f32)

    # ---- slot table: distance from the current visit, clamped
    v_shape = g.op("Shape", ["visit_mask"], "n_visits", start=1, end=2)
    ones = g.op(
        "ConstantOfShape",
        [v_shape],
        "visit_ones",
        value=helper.make_tensor("v", TensorProto.INT64, [1], [1]),
    )
    dist = g.op("CumSum", [ones, g.const("axis0", 0, np.int64)], "distance", exclusive=1, reverse=1)
    dist = g.op("Min", [dist, g.const("last_slot", [max_visits - 1], np.int64)], "distance_c")
    slot = g.op("Gather", [g.const("slot_table", tables["slot"], f32), dist], "slot")

    # ---- code sets of every visit: sum and count in one Gather + ReduceSum per kind
    sums, scales = [], []
    axis2 = g.const("axis2", [2], np.int64)
    for kind in ("dx", "px", "med"):
        name, scale = wq.table(f"{kind}_table", tables[kind])
        sums.append(wq.gather_sum(kind, name, kind, axis2, keepdims=1))
        scales.append(scale)
    stacked = g.op("Concat", sums, "set_sums", axis=2)  # [B, V, 3, D + 1]
    if q8:
        stacked = g.op("Mul", [stacked, g.const("set_scale", np.stack(scales), f32)], "set_sums_f")
    total, count = g.op(
        "Split", [stacked, g.const("split_d1", [d, 1], np.int64)], "set_split", n_out=2, axis=-1
    )
    mean = g.op("Div", [total, g.op("Max", [count, one], "set_count")], "set_mean")
    mean = g.op("Reshape", [mean, g.const("shape_3d", [0, 0, 3 * d], np.int64)], "set_flat")
    set_bias = np.concatenate([s["dx_set.0.bias"], s["px_set.0.bias"], s["med_set.0.bias"]])
    act = g.op("BiasGelu", [mean, g.const("set_bias", set_bias, f32)], "sets", domain=MS_DOMAIN)
    visits = wq.matmul("visit_proj", act, s["visit_proj.weight"].T)
    visits = g.op("Add", [visits, slot], "visits")  # [B, V, D]

    # ---- profile token (and the profile's wide rows)
    axis1 = g.const("axis1", [1], np.int64)
    table = tables["profile"]
    if q8:
        deep_scale = symmetric(table[:, :d], axis=1)[1].astype(np.float64)
        col_scale = np.concatenate([deep_scale, [1.0]] + ([wide_scale] if wide else []))
        name, _ = wq.table("profile_table", table, col_scale)
    else:
        name, _ = wq.table("profile_table", table)
    prof = wq.gather_sum("profile", name, "profile", axis1, keepdims=0)
    if q8:  # the wide columns stay in wide units (scaled with the logits at the end)
        unit = np.concatenate([deep_scale, [1.0]] + ([np.ones(n_labels)] if wide else []))
        prof = g.op("Mul", [prof, g.const("profile_scale", unit, f32)], "profile_sum_f")
    sizes = [d, 1] + ([n_labels] if wide else [])
    parts = g.op(
        "Split",
        [prof, g.const("split_profile", sizes, np.int64)],
        "profile_split",
        n_out=len(sizes),
        axis=-1,
    )
    p_mean = g.op("Div", [parts[0], g.op("Max", [parts[1], one], "profile_count")], "profile_mean")
    token = g.op("Add", [p_mean, g.const("profile_bias", s["profile_proj.bias"], f32)], "token")
    token = g.op("Unsqueeze", [token, axis1], "token_3d")

    # ---- visit encoder
    x = g.op("Concat", [token, visits], "tokens", axis=1)  # [B, 1 + V, D]
    keep = g.op("Pad", ["visit_mask", g.const("pad_front", [0, 1, 0, 0], np.int64), one], "keep")
    keep = g.op("Cast", [keep], "keep_i32", to=TensorProto.INT32)
    y = g.op(
        "LayerNormalization",
        [
            x,
            g.const("ln1_0_g", s["blocks.0.ln1.weight"], f32),
            g.const("ln1_0_b", s["blocks.0.ln1.bias"], f32),
        ],
        "ln1_0",
        axis=-1,
        epsilon=LAYER_NORM_EPS,
    )
    for i in range(layers):
        p = f"blocks.{i}"
        w_qkv = np.concatenate([s[f"{p}.attn.{n}.weight"].T for n in "qkv"], axis=1)
        b_qkv = np.concatenate([s[f"{p}.attn.{n}.bias"] for n in "qkv"])
        att = wq.attention(f"attention_{i}", y, w_qkv, b_qkv, keep, heads)
        out_w, out_b = lin(f"{p}.attn.out")
        o = wq.matmul(f"attn_out_{i}", att, out_w)
        y2, x = g.op(
            "SkipLayerNormalization",
            [
                o,
                x,
                g.const(f"ln2_{i}_g", s[f"{p}.ln2.weight"], f32),
                g.const(f"ln2_{i}_b", s[f"{p}.ln2.bias"], f32),
                g.const(f"attn_out_{i}_b", out_b, f32),
            ],
            domain=MS_DOMAIN,
            epsilon=LAYER_NORM_EPS,
            outputs=[g.name(f"ln2_{i}"), "", "", g.name(f"residual_attn_{i}")],
        )
        w0, b0 = lin(f"{p}.mlp.0")
        h = wq.matmul(f"mlp0_{i}", y2, w0)
        h = g.op("BiasGelu", [h, g.const(f"mlp0_{i}_b", b0, f32)], f"mlp_act_{i}", domain=MS_DOMAIN)
        w2, b2 = lin(f"{p}.mlp.2")
        m = wq.matmul(f"mlp2_{i}", h, w2)
        last = i == layers - 1
        ln_g = s["ln_f.weight"] if last else s[f"blocks.{i + 1}.ln1.weight"]
        ln_b = s["ln_f.bias"] if last else s[f"blocks.{i + 1}.ln1.bias"]
        outs = g.op(
            "SkipLayerNormalization",
            [
                m,
                x,
                g.const(f"ln_next_{i}_g", ln_g, f32),
                g.const(f"ln_next_{i}_b", ln_b, f32),
                g.const(f"mlp2_{i}_b", b2, f32),
            ],
            domain=MS_DOMAIN,
            epsilon=LAYER_NORM_EPS,
            outputs=[
                g.name("ln_f" if last else f"ln1_{i + 1}"),
                "",
                "",
                "" if last else g.name(f"residual_mlp_{i}"),
            ],
        )
        y, x = (outs, None) if last else outs

    # ---- features and head: [current visit, profile token]
    ends = g.op("Gather", [y, g.const("ends", [-1, 0], np.int64)], "ends", axis=1)
    ends = g.op("Reshape", [ends, g.const("shape_2d", [0, 2 * d], np.int64)], "ends_flat")
    fw, fb = lin("feature")
    features = wq.matmul("feature", ends, fw, fb, two_d=True, out="features")
    h0w, h0b = lin("head.0")
    h = wq.matmul("head0", features, h0w)
    h = g.op("BiasGelu", [h, g.const("head0_b", h0b, f32)], "head_act", domain=MS_DOMAIN)
    h3w, h3b = lin("head.3")
    terms = [wq.matmul("head3", h, h3w / logit_unit, h3b / logit_unit, two_d=True)]

    # ---- repeat head: per-drug weights on the previous visit and the share of earlier ones
    if repeat:
        table = tables["med_to_label"]
        if not q8:
            hot = g.op("Gather", [g.const("med_to_label", table, f32), "med"], "med_hot_rows")
            hot = g.op("ReduceMax", [hot, axis2], "med_hot", keepdims=0)
        else:  # 0/1: exact in 8 bits, the max taken on bytes
            hot = g.op(
                "Gather", [g.const("med_to_label_u8", table, np.uint8), "med"], "med_hot_rows"
            )
            hot = g.op("ReduceMax", [hot, axis2], "med_hot_u8", keepdims=0)
            hot = g.op("Cast", [hot], "med_hot", to=TensorProto.FLOAT)
        hist = g.op(
            "Slice",
            [hot, g.const("zero", [0], np.int64), g.const("minus1", [-1], np.int64), axis1],
            "history",
        )  # [B, V - 1, L]
        earlier = g.op("ReduceSum", [hist, axis1], "history_sum", keepdims=0)
        prev = g.op(
            "Slice",
            [
                hist,
                g.const("minus1", [-1], np.int64),
                g.const("int_max", [INT64_MAX], np.int64),
                axis1,
            ],
            "previous",
        )  # [B, 0 or 1, L]
        prev = g.op("ReduceSum", [prev, axis1], "previous_hot", keepdims=0)
        n_hist = g.op("ReduceSum", ["visit_mask", axis1], "n_visits_f", keepdims=1)
        n_hist = g.op("Max", [g.op("Sub", [n_hist, one], "n_history"), one], "n_history_c")
        rm, rl = s["repeat_mean"] / logit_unit, s["repeat_last"] / logit_unit
        share = g.op("Div", [g.const("repeat_mean", rm, f32), n_hist], "share_w")
        terms.append(g.op("Mul", [earlier, share], "repeat_share"))
        terms.append(g.op("Mul", [prev, g.const("repeat_last", rl, f32)], "repeat_prev"))

    # ---- wide path: current diagnoses and procedures, the previous visit's drugs, profile
    if wide:
        axes12 = g.const("axes12", [1, 2], np.int64)
        picks = {
            "dx": ("dx", [-1], [INT64_MAX]),
            "px": ("px", [-1], [INT64_MAX]),
            "med": ("med", [-2], [-1]),  # empty when there is no previous visit
        }
        for kind, (src, start, end) in picks.items():
            cur = g.op(
                "Slice",
                [
                    src,
                    g.const(f"start_{kind}", start, np.int64),
                    g.const(f"end_{kind}", end, np.int64),
                    axis1,
                ],
                f"wide_{kind}_ids",
            )
            name, _ = wq.table(f"wide_{kind}_table", tables[f"wide_{kind}"], wide_scale)
            terms.append(wq.gather_sum(f"wide_{kind}", name, cur, axes12, keepdims=0))
        if wide_mean:  # the current codes' rows averaged, times a fixed scale
            n_cur = g.op(
                "Slice",
                [
                    count,  # [B, V, 3, 1]: the code counts of every visit and kind
                    g.const("cur_start", [-1, 0], np.int64),
                    g.const("cur_end", [INT64_MAX, 2], np.int64),
                    g.const("axes_12", [1, 2], np.int64),
                ],
                "current_counts",
            )  # [B, 1, 2, 1]: the current visit's diagnoses and procedures
            n_cur = g.op(
                "ReduceSum", [n_cur, g.const("axes_23", [2, 3], np.int64)], "n_current", keepdims=0
            )
            factor = g.op(
                "Div",
                [g.const("wide_codes_scale", wide_mean, f32), g.op("Max", [n_cur, one], "n_cur_c")],
                "wide_codes_ratio" if wide_sqrt else "wide_codes_factor",
            )  # [B, 1]
            if wide_sqrt:
                factor = g.op("Sqrt", [factor], "wide_codes_factor")
            codes = g.op("Add", [terms.pop(-3), terms.pop(-2)], "wide_codes_sum")
            terms.insert(-1, g.op("Mul", [codes, factor], "wide_codes_mean"))
        terms.append(parts[2])
    if q8 and wide:
        total = g.op("Sum", terms, "logits_in_wide_units")
        g.op("Mul", [total, g.const("wide_scale", wide_scale, f32)], outputs=["logits"])
    else:
        g.op("Sum", terms, outputs=["logits"])

    # ---- the model
    dims = {
        "dx": ["batch", "visits", "n_dx"],
        "px": ["batch", "visits", "n_px"],
        "med": ["batch", "visits", "n_med"],
        "visit_mask": ["batch", "visits"],
        "profile": ["batch", "n_profile"],
    }
    inputs = [
        helper.make_tensor_value_info(
            n, TensorProto.FLOAT if n == "visit_mask" else TensorProto.INT64, dims[n]
        )
        for n in INPUT_NAMES
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])]
    if with_features:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", d]))
    graph = helper.make_graph(g.nodes, "leader_student", inputs, outputs, g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="pocketrec",
    )
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def weights_only(model, min_elements: int = WEIGHT_MIN_ELEMENTS):
    """A copy of the fp32 compact graph `model` whose tables and weight matrices (every 2-D
    float initializer of at least `min_elements` values: `graph_builder.is_weight_matrix`) are
    stored int8, one scale per column (integer columns exact), each restored by a Cast and a
    Mul at the head of the graph.

    Their inputs are all initializers, so ONNX Runtime's constant folding turns them back into
    the float tables when a session is created: the file is the int8 graph's size and the
    session runs the fp32 graph (`export.parity.check_weight_storage` checks both)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept, restore = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or not is_weight_matrix(arr.shape, min_elements):
            kept.append(init)
            continue
        q, scale = column_int8(arr)
        name = init.name
        kept += [
            numpy_helper.from_array(q, f"{name}_q8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
        ]
        restore += [
            helper.make_node(
                "Cast", [f"{name}_q8"], [f"{name}_f"], name=f"n_{name}_f", to=TensorProto.FLOAT
            ),
            helper.make_node(
                "Mul", [f"{name}_f", f"{name}_scale"], [name], name=f"n_{name}_restore"
            ),
        ]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(restore + nodes)
    onnx.checker.check_model(out)
    return out


def save_graph(model, path: Path, meta: Mapping[str, str]) -> dict:
    """Write `model` to `path` with `meta` as its metadata (atomically); returns a summary."""
    from contract.files import atomic_write_bytes
    from export.onnx import describe

    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v if isinstance(v, str) else json.dumps(v))
    atomic_write_bytes(Path(path), model.SerializeToString())
    return describe(path)


def export_compact(
    model, config, fp32_path: Path, int8_path: Path, preset="avx2", form: str = "weights"
) -> tuple:
    """Write the student `model` (with its `config`) as the compact fp32 graph at `fp32_path`
    and its int8 file at `int8_path` in the `form` of `INT8_FORMS`: "weights" (`weights_only`:
    8-bit storage, float compute once loaded; the `preset` is not used) or "dynamic" (integer
    products per the quantization `preset`, a name or preset); both graphs are checked against
    the graph contract (`graph.check_graph`).

    Returns (fp32 info, quantization record): `describe` of the fp32 file plus the student
    config, and a record like `export.quantize.quantize`'s (name, form, preset, versions, node
    counts, both files' names, sizes, sha256 and op counts)."""
    import hashlib

    import onnx
    import onnxruntime

    from contract.layout import OUTPUT_NAMES
    from export.medication.graph import check_graph
    from export.quantize import get_preset

    if form not in INT8_FORMS:
        raise ValueError(f"form must be one of {', '.join(INT8_FORMS)}; got {form!r}")
    preset = get_preset(preset) if form == "dynamic" else None
    state = state_of(model)
    meta = {
        "pocketrec.format": FORMAT,
        "pocketrec.inputs": ",".join(INPUT_NAMES),
        "pocketrec.outputs": ",".join(OUTPUT_NAMES),
    }
    if hasattr(config, "to_dict"):
        meta["pocketrec.student_config"] = json.dumps(config.to_dict(), sort_keys=True)
    fp32 = build_graph(state, config)
    check_graph(fp32)
    # both graphs are built and checked before either file is written
    if preset is None:
        int8 = weights_only(fp32)
        described = {
            "name": "int8-weights",
            "form": form,
            "min_elements": WEIGHT_MIN_ELEMENTS,
        }
        how = {
            "tables": "int8, one scale per column (integer columns exact), restored to float "
            "by Cast + Mul on the initializers, which ONNX Runtime folds when the session is made",
            "products": "float (the session runs the fp32 graph)",
        }
    else:
        int8 = build_graph(state, config, preset)
        described = preset.to_dict() | {"form": form}
        how = {
            "tables": "int8, one scale per column (the 0/1 repeat table uint8, exact)",
            "products": "DynamicQuantizeMatMul / QAttention (int8 weights, activations on the fly)",
        }
    check_graph(int8)
    info = save_graph(fp32, Path(fp32_path), meta)
    qmeta = meta | {"pocketrec.quantization": json.dumps(described, sort_keys=True)}
    qinfo = save_graph(int8, Path(int8_path), qmeta)
    if hasattr(config, "to_dict"):
        info["student_config"] = config.to_dict()
    data = Path(int8_path).read_bytes()
    record = {
        "name": described["name"],
        "form": form,
        "preset": preset.to_dict() if preset is not None else None,
        "quantizer": "export.medication.compact",
        "graph": "compact",
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        **how,
        "optimization": {
            "enabled": True,
            "nodes": {"fp32": len(fp32.graph.node), "shipped": len(int8.graph.node)},
        },
        "source": {
            "file": Path(fp32_path).name,
            "bytes": info["bytes"],
            "sha256": info["sha256"],
            "ops": info["ops"],
        },
        "output": {
            "file": Path(int8_path).name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "ops": qinfo["ops"],
        },
    }
    record["size_ratio"] = round(record["output"]["bytes"] / record["source"]["bytes"], 4)
    return info, record
