"""The fine-tuned teacher on the device: what a user would run instead of our student.

`export_teacher` turns a saved teacher (`distill.medication.teacher.save_teacher`: backbone +
LoRA adapter + bias-free head) into ONNX the way optimum is meant to be used: the LoRA adapter
is merged into the backbone, the backbone is saved as a plain transformers model, exported with
`optimum.onnxruntime.ORTModelForFeatureExtraction.from_pretrained(..., export=True)` and
quantised with `ORTQuantizer` and an `AutoQuantizationConfig` preset (dynamic int8, per
channel). The pooling (mean over the attention mask, or the last token for a decoder) and the
head (a 384 x n_labels product) run in numpy beside the session: `OnnxTeacher`.

The medication student's int8 graph is quantised by `export.quantize` instead (optimum's
quantizer wants a transformers model folder; see that module). Everything here is bench-side:
heavy imports (torch, transformers, optimum) stay inside the functions.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

OPTIMUM_PRESETS = ("avx2", "avx512_vnni", "arm64")


def _merged_backbone(teacher):
    backbone = teacher.backbone
    if hasattr(backbone, "merge_and_unload"):  # a peft LoRA wrapper
        backbone = backbone.merge_and_unload()
    return backbone


def export_teacher(
    teacher_dir: str | Path, out_dir: str | Path, preset: str = "avx512_vnni"
) -> dict:
    """Export the teacher saved at `teacher_dir` to `out_dir`: `fp32/model.onnx`,
    `int8/model_quantized.onnx` (optimum), the tokenizer, `head.npy` and `teacher_onnx.json`
    (pooling, max length, files and sizes). Returns that JSON."""
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from distill.backbone import quiet_transformers
    from distill.medication.teacher import load_teacher

    if preset not in OPTIMUM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(OPTIMUM_PRESETS)}")
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    teacher = load_teacher(teacher_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pocketrec-teacher-") as tmp:
        plain = Path(tmp) / "backbone"
        with torch.no_grad():
            _merged_backbone(teacher).save_pretrained(str(plain), safe_serialization=True)
        teacher.tokenizer.save_pretrained(str(plain))
        fp32_dir = out_dir / "fp32"
        if fp32_dir.exists():
            shutil.rmtree(fp32_dir)
        with quiet_transformers():
            ort_model = ORTModelForFeatureExtraction.from_pretrained(str(plain), export=True)
        ort_model.save_pretrained(str(fp32_dir))
    teacher.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    quantizer = ORTQuantizer.from_pretrained(str(fp32_dir), file_name="model.onnx")
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
    int8_dir = out_dir / "int8"
    quantizer.quantize(save_dir=str(int8_dir), quantization_config=qconfig)
    head = teacher.head.weight.detach().to(torch.float32).numpy()
    np.save(out_dir / "head.npy", head)
    fp32_file = fp32_dir / "model.onnx"
    int8_file = next(int8_dir.glob("*.onnx"))
    info = {
        "format": "pocketrec-teacher-onnx/1",
        "pooling": teacher.pooling,
        "max_length": int(teacher.max_length),
        "hidden_size": int(teacher.hidden_size),
        "n_labels": int(teacher.n_labels),
        "params": int(sum(p.numel() for p in _merged_backbone(teacher).parameters()))
        + int(head.size),
        "quantization": {"tool": "optimum ORTQuantizer", "preset": preset, "per_channel": True},
        "files": {
            "fp32": str(fp32_file.relative_to(out_dir)),
            "int8": str(int8_file.relative_to(out_dir)),
        },
        "bytes": {"fp32": fp32_file.stat().st_size, "int8": int8_file.stat().st_size},
    }
    (out_dir / "teacher_onnx.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


class OnnxTeacher:
    """An exported teacher in ONNX Runtime: tokenizer -> backbone session -> pooling -> head."""

    def __init__(self, out_dir: str | Path, which: str = "int8", threads: int = 1) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        out_dir = Path(out_dir)
        self.info = json.loads((out_dir / "teacher_onnx.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(out_dir / "tokenizer"))
        self.head = np.load(out_dir / "head.npy")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(out_dir / self.info["files"][which]), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.info["max_length"],
            padding=True,
            return_tensors="np",
        )
        feeds = {k: enc[k].astype(np.int64) for k in self.input_names if k in enc}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        hidden = self.session.run(None, feeds)[0]
        mask = enc["attention_mask"].astype(np.float32)
        if self.info["pooling"] == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        else:  # last real token (right padding)
            last = mask.sum(1).astype(np.int64) - 1
            pooled = hidden[np.arange(len(texts)), last]
        return pooled @ self.head.T
