"""Writing an ONNX graph by hand, and putting weights into it as fp32 or 8-bit.

`GraphBuilder` hands out unique names, reuses equal constants and adds one node a call.
`Weights` puts a model's tables and dense products into such a graph as the quantization preset
(`export.quantize.QuantizationPreset`) says, or as fp32 without one:

- a table [N, W] read by Gather: int8 with one scale per column (integer columns, such as a
  count column of ones, stay exact with scale 1); the gathered rows are cast to float and summed
  by the caller, who applies the column scales to the (much smaller) sum. ONNX Runtime's
  per-axis DequantizeLinear and GatherBlockQuantized were measured 3-8x slower per node here;
- a dense product: `DynamicQuantizeMatMul` (int8 or uint8 weights per the preset, one scale per
  output channel, activations quantized on the fly; the bias inside); an attention layer
  `QAttention` after one `DynamicQuantizeLinear`.

Used by `export.medication.compact`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

MS_DOMAIN = "com.microsoft"
PRODUCTS = ("dynamic", "fp32")

__all__ = [
    "MS_DOMAIN",
    "PRODUCTS",
    "GraphBuilder",
    "Weights",
    "column_int8",
    "is_weight_matrix",
    "symmetric",
]


def is_weight_matrix(shape, min_elements: int) -> bool:
    """Whether a float initializer of `shape` is a table or weight matrix that 8-bit weight
    storage keeps in 8 bits: 2-D and at least `min_elements` values. Shared by the writer
    (`export.medication.compact.weights_only`) and its gate (`export.parity.check_weight_storage`),
    so the gate checks exactly what the writer promises (biases and scale vectors are 1-D)."""
    shape = tuple(int(n) for n in shape)
    return len(shape) == 2 and int(np.prod(shape, dtype=np.int64)) >= min_elements


class GraphBuilder:
    """Writes an ONNX graph node by node: unique names, reused constants, one call a node."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._names: Counter = Counter()
        self._consts: dict[str, list[str]] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def name(self, base: str) -> str:
        self._names[base] += 1
        k = self._names[base]
        return base if k == 1 else f"{base}_{k}"

    def const(self, base: str, value, dtype=None) -> str:
        """An initializer; asking again for the same base name and value reuses it."""
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        for name in self._consts.get(base, ()):
            old = self._arrays[name]
            if old.dtype == arr.dtype and old.shape == arr.shape and np.array_equal(old, arr):
                return name
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        self._consts.setdefault(base, []).append(name)
        self._arrays[name] = arr
        return name

    def op(self, op_type: str, inputs, base: str | None = None, n_out: int = 1, **attrs):
        """Add a node; returns its output name (or the list of `n_out` names)."""
        from onnx import helper

        domain = attrs.pop("domain", "")
        outs = attrs.pop("outputs", None)
        if outs is None:
            stem = self.name(base or op_type.lower())
            outs = [stem] if n_out == 1 else [f"{stem}_{i}" for i in range(n_out)]
        node = helper.make_node(
            op_type,
            list(inputs),
            list(outs),
            name=self.name(f"n_{outs[0] or op_type}"),
            domain=domain,
            **attrs,
        )
        self.nodes.append(node)
        named = [o for o in outs if o]
        return named[0] if len(named) == 1 else named


def symmetric(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantisation with one scale per index of `axis` kept: (q int, scale)."""
    top = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    peak = np.abs(w).max(axis=reduce) if w.size else np.zeros(w.shape[axis])
    scale = np.where(peak > 0, peak / top, 1.0)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -top, top)
    return q.astype(np.int64), scale.astype(np.float32)


def column_int8(table: np.ndarray, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """`table` [N, W] as int8 with one scale per column: `scale`, or max |column| / 127 with
    the integer columns (counts, 0/1 tables) kept exact at scale 1. Returns (q int8, scale
    float32)."""
    table = np.asarray(table, np.float64)
    if scale is None:
        _, scale = symmetric(table, axis=1)
        exact = np.all(table == np.rint(table), axis=0) & (np.abs(table).max(axis=0) <= 127)
        scale = np.where(exact, 1.0, scale)
    scale = np.asarray(scale, np.float64)
    q = np.clip(np.rint(table / scale[None, :]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


class Weights:
    """Puts tables and products into the graph, as fp32 or 8-bit per the preset."""

    def __init__(self, g: GraphBuilder, preset, products: str) -> None:
        self.g = g
        self.preset = preset
        self.products = products if preset is not None else "fp32"
        self.quantized_products = 0
        # QAttention: measured no slower than the fp32 Attention at batch 1, so every
        # product of the int8 graph is an integer one
        self.quantized_attention = True

    def table(self, base: str, table: np.ndarray, scale=None) -> tuple[str, np.ndarray | None]:
        """`table` [N, W] as an initializer: float32, or (with a preset) int8 with one scale per
        column (`scale`, or max |column| / 127; integer columns such as the count stay exact
        with scale 1). Returns (name, scale or None)."""
        if self.preset is None:
            return self.g.const(base, table, np.float32), None
        q, scale = column_int8(table, scale)
        return self.g.const(f"{base}_q8", q, np.int8), scale

    def gather_sum(self, base: str, table: str, ids: str, axes: str, keepdims: int) -> str:
        """ReduceSum over `axes` of the rows of `table` at `ids` (in the table's own units:
        8-bit tables are summed as integers, their column scales applied by the caller)."""
        g = self.g
        rows = g.op("Gather", [table, ids], f"{base}_rows")
        if self.preset is not None:
            from onnx import TensorProto

            rows = g.op("Cast", [rows], f"{base}_rows_f", to=TensorProto.FLOAT)
        return g.op("ReduceSum", [rows, axes], f"{base}_sum", keepdims=keepdims)

    def _weight(self, base: str, w_t: np.ndarray) -> tuple[str, str, str]:
        """int8/uint8 weight [in, out] per the preset: (weight, scale, zero point) names."""
        g, p = self.g, self.preset
        bits = 7 if p.reduce_range else 8
        if p.per_channel:
            q, scale = symmetric(w_t, axis=1, bits=bits)
        else:
            top = 2 ** (bits - 1) - 1
            peak = float(np.abs(w_t).max()) or 1.0
            scale = np.float32(peak / top)
            q = np.clip(np.rint(w_t / scale), -top, top).astype(np.int64)
        if p.weight_type == "uint8":
            qw = g.const(f"{base}_wq", q + 128, np.uint8)
            zp = g.const(f"{base}_wzp", np.full(np.shape(scale), 128), np.uint8)
        else:
            qw = g.const(f"{base}_wq", q, np.int8)
            zp = g.const(f"{base}_wzp", np.zeros(np.shape(scale)), np.int8)
        return qw, g.const(f"{base}_wscale", scale, np.float32), zp

    def attention(self, base, x, w_qkv, b_qkv, keep, heads) -> str:
        g = self.g
        b = g.const(f"{base}_b", b_qkv, np.float32)
        if self.products == "fp32" or not self.quantized_attention:
            w = g.const(f"{base}_w", w_qkv, np.float32)
            return g.op("Attention", [x, w, b, keep], base, domain=MS_DOMAIN, num_heads=heads)
        xq, xs, xz = g.op("DynamicQuantizeLinear", [x], f"{base}_xq", n_out=3)
        qw, ws, wz = self._weight(base, w_qkv)
        self.quantized_products += 1
        return g.op(
            "QAttention",
            [xq, qw, b, xs, ws, keep, xz, wz],
            base,
            domain=MS_DOMAIN,
            num_heads=heads,
        )

    def matmul(
        self, base: str, x: str, w_t: np.ndarray, bias=None, two_d: bool = False, out=None
    ) -> str:
        """x @ w_t (+ bias); w_t is [in, out]; `two_d`: x is [rows, in] (a Gemm in fp32);
        `out`: the output's name."""
        g = self.g
        outputs = [out] if out else None
        if self.products == "fp32":
            w = g.const(f"{base}_w", w_t, np.float32)
            if bias is None:
                return g.op("MatMul", [x, w], base, outputs=outputs)
            b = g.const(f"{base}_b", bias, np.float32)
            if two_d:
                return g.op("Gemm", [x, w, b], base, outputs=outputs)
            y = g.op("MatMul", [x, w], f"{base}_mm")
            return g.op("Add", [y, b], base, outputs=outputs)
        qw, scale, zp = self._weight(base, w_t)
        inputs = [x, qw, scale, zp]
        if bias is not None:
            inputs.append(g.const(f"{base}_b", bias, np.float32))
        self.quantized_products += 1
        return g.op("DynamicQuantizeMatMul", inputs, base, domain=MS_DOMAIN, outputs=outputs)
