"""Dynamic int8 quantization of the exported student, with named per-CPU presets, shipped as
ONNX Runtime optimises it.

`quantize` (issue 14): the fp32 graph is first simplified by `export.optimize` (Gelu fused,
constant Reshape targets, q/k/v products merged, padding masks as one Cast), quantized, and then
saved as ONNX Runtime's offline optimisation (ORT_ENABLE_EXTENDED) leaves it: each integer
product fused with its activation quantisation, scale and bias (`DynamicQuantizeMatMul`,
`MatMulIntegerToFloat`), no Cast chains. Measured (bench/latency.py, mimic4-demo quick run,
fold 0, one thread, batch 1): 272 nodes -> 138, faster than the plain quantized graph and than
fp32 as exported, but no faster than the fp32 graph given the same passes. The com.microsoft
ops it uses load on onnxruntime 1.27 (checked). `optimize=False` gives the plain quantized graph
(standard ONNX ops only). The medication student no longer ships through here: it is written
as a compact graph straight from its weights (`export.medication.compact`, ~65-77 nodes);
`quantize` serves the news encoders and the benchmark's comparisons.

Dynamic quantization (no calibration data): weights are stored as 8-bit integers with a scale
(per output channel where `per_channel`), activations are quantized on the fly per batch
(DynamicQuantizeLinear) and the products run as MatMulInteger; the embedding table is stored
as 8-bit and dequantized after the Gather.

The presets follow the semantics of optimum's `AutoQuantizationConfig.<target>(is_static=False)`
with its defaults (symmetric weights, per-channel, QOperator format, IntegerOps mode):

    avx2          uint8 weights (u8 x u8 products: no saturation on AVX2's VPMADDUBSW path)
    avx512_vnni   int8 weights (u8 x s8 products: VPDPBUSD computes them without saturation)
    arm64         int8 weights (u8 x s8 products: as fast as u8 x u8 on big cores, faster on small)

Which ops: MatMul and Gemm (every Linear layer) and Gather (the shared embedding table and the
repeat head's fixed 0/1 table). Measured on the mimic4-demo KD student of runs/quick2 fold 0
(dim 64, 1476/354/140/35 codes, 138 labels; fp32 file 1.22 MB) on its 54 held-out samples:
with Gather the int8 file is 0.35 MB, without it 0.80 MB (the embedding table is 43% of the
fp32 weights), and either way |delta PR-AUC| <= 0.0003, |delta Jaccard| <= 0.0011 and the mean
top-10 overlap is >= 0.99 -- so Gather is in.

Why `onnxruntime.quantization.quantize_dynamic` and not optimum's `ORTQuantizer`:

- `ORTQuantizer.from_pretrained(dir, file_name=...)` expects a transformers export: it asks
  `AutoConfig` for the folder's config.json, and for our plain graph that either fails (a
  warning) or, worse, transformers guesses a model type from a substring of the folder path
  and `quantize()` saves that config beside the int8 file (a folder "opt" gives an OPT
  config; our "medication-mimic4-demo" would be taken for the "mimi" audio codec).
  `quantize()` also writes ort_config.json, picks the output name (`<stem>_quantized.onnx`)
  itself, and importing it pulls in transformers (~6 s).
- it builds ORT's quantizer without `MatMulConstBOnly`, so the attention's activation x
  activation products (q.k^T, softmax.v) get quantized too: more error, no size gain.
  `quantize_dynamic` only quantizes MatMuls whose B is a constant weight.
- `quantize_dynamic` runs ONNX shape inference first (so the quantizer knows every tensor's
  type); `ORTQuantizer` loads the graph as is.

So the preset settings are optimum's, the engine is the same ORT quantizer, driven directly.
Gemm: ORT's dynamic quantizer only knows MatMul; we rewrite each Gemm with a constant weight
into MatMul (+ Add for the bias) first, so the 2-D Linear layers (feature, head) are covered
whatever the ORT version does with Gemm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from contract.files import atomic_write_bytes, sha256_file

WEIGHT_TYPES = ("int8", "uint8")
SUPPORTED_OP_TYPES = ("MatMul", "Gemm", "Gather")
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Gather")
SIDECAR_SUFFIX = ".quantization.json"
QUANTIZER = "onnxruntime.quantization.quantize_dynamic"


@dataclass(frozen=True)
class QuantizationPreset:
    """How to quantize: which weights, to what type, per channel or per tensor.

    name: the preset's key in `PRESETS`; target: the hardware it is meant for, in words;
    per_channel: one scale per output channel of each weight matrix (else one per tensor);
    reduce_range: 7-bit weights (for CPUs whose 8-bit dot products can saturate);
    weight_type: "int8" or "uint8"; op_types: which ops' constant inputs become 8-bit
    (a subset of `SUPPORTED_OP_TYPES`, MatMul required); mode: "dynamic" (the only one: the
    student has no calibration set in the bundle); weight_symmetric: zero point at the middle
    of the range (optimum's default).
    """

    name: str
    target: str
    per_channel: bool
    reduce_range: bool
    weight_type: str
    op_types: tuple[str, ...]
    mode: str = "dynamic"
    weight_symmetric: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"preset name must be a non-empty string; got {self.name!r}")
        for flag in ("per_channel", "reduce_range", "weight_symmetric"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool; got {getattr(self, flag)!r}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}; got {self.weight_type!r}")
        unknown = sorted(set(self.op_types) - set(SUPPORTED_OP_TYPES))
        if unknown:
            raise ValueError(f"unsupported op_types {unknown}; supported: {SUPPORTED_OP_TYPES}")
        if "MatMul" not in self.op_types:
            raise ValueError("op_types must include MatMul (the Linear layers)")
        if len(set(self.op_types)) != len(self.op_types):
            raise ValueError(f"op_types has duplicates: {self.op_types}")
        if self.mode != "dynamic":
            raise ValueError(f"only mode='dynamic' is supported; got {self.mode!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["op_types"] = list(self.op_types)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationPreset:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown QuantizationPreset fields: {', '.join(extra)}")
        return cls(**data)


PRESETS: dict[str, QuantizationPreset] = {
    p.name: p
    for p in (
        QuantizationPreset(
            name="avx2",
            target="x86-64 desktop CPUs with AVX2 (u8 activations x u8 weights)",
            per_channel=True,
            reduce_range=False,
            weight_type="uint8",
            op_types=DEFAULT_OP_TYPES,
        ),
        QuantizationPreset(
            name="avx512_vnni",
            target="x86-64 CPUs with AVX-512 VNNI (u8 activations x s8 weights)",
            per_channel=True,
            reduce_range=False,
            weight_type="int8",
            op_types=DEFAULT_OP_TYPES,
        ),
        QuantizationPreset(
            name="arm64",
            target="64-bit ARM phones, tablets and laptops (u8 activations x s8 weights)",
            per_channel=True,
            reduce_range=False,
            weight_type="int8",
            op_types=DEFAULT_OP_TYPES,
        ),
    )
}


def get_preset(preset: str | QuantizationPreset) -> QuantizationPreset:
    """A preset by name (or the preset itself)."""
    if isinstance(preset, QuantizationPreset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown quantization preset {preset!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def sidecar_path(int8_path: Path) -> Path:
    """Where `quantize` writes the preset JSON: `<int8_path>.quantization.json`."""
    int8_path = Path(int8_path)
    return int8_path.with_name(int8_path.name + SIDECAR_SUFFIX)


# --------------------------------------------------------------------------- graph rewrite


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W[, C]) with a constant W into MatMul(A, W') [+ Add(C)], in place.

    Only the plain Linear form is touched (alpha = beta = 1, transA = 0); transB = 1 stores
    W transposed once as a new initializer. Returns how many Gemm nodes were rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    used = Counter(name for node in graph.node for name in node.input)
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    new_nodes, rewritten = [], 0
    for node in graph.node:
        a = _attrs(node) if node.op_type == "Gemm" else {}
        plain = (
            node.op_type == "Gemm"
            and node.domain in ("", "ai.onnx")
            and len(node.input) >= 2
            and node.input[1] in inits
            and float(a.get("alpha", 1.0)) == 1.0
            and float(a.get("beta", 1.0)) == 1.0
            and int(a.get("transA", 0)) == 0
        )
        if not plain:
            new_nodes.append(node)
            continue
        weight_name = node.input[1]
        if int(a.get("transB", 0)):
            w = numpy_helper.to_array(inits[weight_name]).T.copy()
            weight_name = fresh(f"{node.input[1]}_t")
            graph.initializer.append(numpy_helper.from_array(w, weight_name))
            used[node.input[1]] -= 1
        has_bias = len(node.input) > 2 and node.input[2] != ""
        prefix = node.name or fresh("gemm")
        product = fresh(f"{prefix}_matmul_out") if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], weight_name], [product], name=fresh(f"{prefix}_matmul")
            )
        )
        if has_bias:
            new_nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=fresh(f"{prefix}_bias")
                )
            )
        rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        # drop weights that only the rewritten Gemms read (their transposes replace them)
        keep = [t for t in graph.initializer if used.get(t.name, 1) > 0]
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
        onnx.checker.check_model(model)
    return rewritten


# --------------------------------------------------------------------------- quantize


def _ops(model) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


@contextlib.contextmanager
def _quiet_quantizer():
    """ORT's quantizer logs on the root logger ("consider pre-processing", ...)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize(
    fp32_path: Path, int8_path: Path, preset: str | QuantizationPreset, optimize: bool = True
) -> dict:
    """Quantize the fp32 graph at `fp32_path` to `int8_path` with `preset` (name or preset).

    With `optimize` (the default) the graph is first simplified (`export.optimize.simplify`:
    Gelu fused, constant Reshape targets, sibling MatMuls merged, masks as one Cast) and the
    int8 graph is then saved as ONNX Runtime optimised it offline (ORT_ENABLE_EXTENDED: the
    integer products fused with their activation quantisation and bias), so a batch-1 call
    runs about half the nodes of the plain quantised graph; see `export.optimize`.

    Writes the int8 model atomically (temporary file, then rename) and a JSON record beside
    it as `<int8_path>.quantization.json`: the preset, the quantizer and its version, both
    files' names, sizes, sha256 and op counts, and the optimisation passes. Returns that
    record. The int8 graph keeps the fp32 graph's metadata and gains the preset under
    `pocketrec.quantization`.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export import optimize as opt

    preset = get_preset(preset)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if fp32_path.resolve() == int8_path.resolve():
        raise ValueError(f"int8_path must differ from fp32_path ({fp32_path})")
    int8_path.parent.mkdir(parents=True, exist_ok=True)

    model = onnx.load(str(fp32_path))
    source_ops = _ops(model)
    meta = {p.key: p.value for p in model.metadata_props}
    passes = opt.simplify(model) if optimize else {}
    rewritten = gemm_to_matmul(model) if "Gemm" in preset.op_types else 0
    ort_ops = [op for op in preset.op_types if op != "Gemm"]  # Gemm is MatMul by now
    weight_type = QuantType.QInt8 if preset.weight_type == "int8" else QuantType.QUInt8

    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=int8_path.parent) as tmp_dir:
        raw = Path(tmp_dir) / "raw.onnx"
        with _quiet_quantizer():
            quantize_dynamic(
                model,  # a ModelProto: ORT shape-infers a copy in its own temporary folder
                raw,
                op_types_to_quantize=ort_ops,
                per_channel=preset.per_channel,
                reduce_range=preset.reduce_range,
                weight_type=weight_type,
                extra_options={
                    "WeightSymmetric": preset.weight_symmetric,
                    "MatMulConstBOnly": True,
                },
            )
        quantized_nodes = len(onnx.load(str(raw)).graph.node)
        if optimize:
            fused = Path(tmp_dir) / "fused.onnx"
            opt.ort_optimize(raw, fused)
            raw = fused
        qmodel = onnx.load(str(raw))
    meta["pocketrec.quantization"] = json.dumps(preset.to_dict(), sort_keys=True)
    del qmodel.metadata_props[:]
    for key, value in meta.items():
        qmodel.metadata_props.add(key=key, value=value)
    opt.prune_opsets(qmodel)
    onnx.checker.check_model(qmodel, full_check=not optimize)  # contrib ops: no full check
    data = qmodel.SerializeToString()
    atomic_write_bytes(int8_path, data)

    record = {
        "name": preset.name,
        "preset": preset.to_dict(),
        "quantizer": QUANTIZER,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "gemm_rewritten_to_matmul": rewritten,
        "optimization": {
            "enabled": bool(optimize),
            "passes": passes,
            "ort_level": "ORT_ENABLE_EXTENDED" if optimize else None,
            "nodes": {
                "fp32": sum(source_ops.values()),
                "quantized": quantized_nodes,
                "shipped": len(qmodel.graph.node),
            },
        },
        "source": {
            "file": fp32_path.name,
            "bytes": fp32_path.stat().st_size,
            "sha256": sha256_file(fp32_path),
            "ops": source_ops,
        },
        "output": {
            "file": int8_path.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "ops": _ops(qmodel),
        },
    }
    record["size_ratio"] = round(record["output"]["bytes"] / record["source"]["bytes"], 4)
    sidecar = sidecar_path(int8_path)
    atomic_write_bytes(sidecar, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return record
