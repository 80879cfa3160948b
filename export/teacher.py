"""The teacher on the device: what a user would run instead of our student.

`export_teacher` turns a saved teacher (`distill.medication.teacher.save_teacher`: backbone +
LoRA adapter + bias-free head) into ONNX the way optimum is meant to be used: the LoRA adapter
is merged into the backbone, the backbone is saved as a plain transformers model, exported with
`optimum.onnxruntime.ORTModelForFeatureExtraction.from_pretrained(..., export=True)` and
quantised with `ORTQuantizer` and an `AutoQuantizationConfig` preset (dynamic int8, per
channel). The pooling (mean over the attention mask, or the last token for a decoder) and the
head (a hidden x n_labels product) run in numpy beside the session: `OnnxTeacher`.

`frozen_teacher` is the frozen teacher of `--frozen-teacher` runs (e.g. the LLM SmolLM2-135M-
Instruct, `backbone="smollm2"`): the backbone as it is, pooled at the last real token for a
decoder, and a linear head over the drug classes. Its head in a run is a logistic probe fit per
fold; here it is a fresh `TeacherModel` head of the same shape, which costs the same time, so
`export_teacher_model(frozen_teacher(...))` is the fair on-device baseline for such a run.

The medication student's int8 graph is written by `export.medication.compact` instead (it
builds the graph from the weights; optimum's quantizer wants a transformers model folder, see
`export.quantize`). Everything here is bench-side: heavy imports (torch, transformers, optimum)
stay inside the functions.
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


def frozen_teacher(backbone: str, n_labels: int, max_length: int = 512):
    """A frozen teacher (no LoRA) on `backbone` (a name such as "smollm2" or "minilm", or a
    model folder) with a fresh linear head over `n_labels` classes, in eval mode."""
    from distill.backbone import TeacherConfig
    from distill.medication.teacher import TeacherModel

    cfg = TeacherConfig(backbone=backbone, lora=False, frozen=True, max_length=max_length)
    return TeacherModel.from_config(cfg, n_labels).eval()


def export_teacher(
    teacher_dir: str | Path, out_dir: str | Path, preset: str = "avx512_vnni"
) -> dict:
    """Export the teacher saved at `teacher_dir` to `out_dir` (see `export_teacher_model`)."""
    from distill.medication.teacher import load_teacher

    return export_teacher_model(load_teacher(Path(teacher_dir)), out_dir, preset)


def export_teacher_model(teacher, out_dir: str | Path, preset: str = "avx512_vnni") -> dict:
    """Export `teacher` (a `distill.medication.teacher.TeacherModel`) to `out_dir`:
    `fp32/model.onnx`, `int8/model_quantized.onnx` (optimum), the tokenizer, `head.npy` and
    `teacher_onnx.json` (pooling, max length, files and sizes). Returns that JSON."""
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from distill.backbone import quiet_transformers

    if preset not in OPTIMUM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(OPTIMUM_PRESETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = _merged_backbone(teacher)
    with tempfile.TemporaryDirectory(prefix="pocketrec-teacher-") as tmp:
        plain = Path(tmp) / "backbone"
        with torch.no_grad():
            backbone.save_pretrained(str(plain), safe_serialization=True)
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
        "backbone": teacher.cfg.backbone,
        "model_type": str(getattr(backbone.config, "model_type", "")),
        "pooling": teacher.pooling,
        "max_length": int(teacher.max_length),
        "truncation_side": teacher.cfg.truncation_side,
        "hidden_size": int(teacher.hidden_size),
        "n_labels": int(teacher.n_labels),
        "params": int(sum(p.numel() for p in backbone.parameters())) + int(head.size),
        "quantization": {"tool": "optimum ORTQuantizer", "preset": preset, "per_channel": True},
        "files": {
            "fp32": str(fp32_file.relative_to(out_dir)),
            "int8": str(int8_file.relative_to(out_dir)),
        },
        "bytes": {"fp32": _onnx_bytes(fp32_file), "int8": _onnx_bytes(int8_file)},
    }
    (out_dir / "teacher_onnx.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _onnx_bytes(path: Path) -> int:
    """The model file plus its external data files (optimum writes `model.onnx_data` for
    graphs over 2 GB; none of ours is, but count them if they are there)."""
    extra = sum(p.stat().st_size for p in path.parent.glob(path.name + "_data*"))
    return path.stat().st_size + extra


class OnnxTeacher:
    """An exported teacher in ONNX Runtime: tokenizer -> backbone session -> pooling -> head.

    `max_length`: the tokens kept per prompt (default: the exported teacher's); the tokenizer
    truncates on the side the teacher was configured with (the left by default: the end of a
    LEADER prompt, the current visit and the closing phrase, is what must stay)."""

    def __init__(
        self,
        out_dir: str | Path,
        which: str = "int8",
        threads: int = 1,
        max_length: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        out_dir = Path(out_dir)
        self.info = json.loads((out_dir / "teacher_onnx.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(out_dir / "tokenizer"))
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = self.info.get("truncation_side", "left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = int(max_length or self.info["max_length"])
        self.head = np.load(out_dir / "head.npy")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(out_dir / self.info["files"][which]), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def pooled(self, texts: list[str]) -> np.ndarray:
        """The pooled hidden states [len(texts), hidden]."""
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="np",
        )
        mask = enc["attention_mask"].astype(np.int64)
        feeds = {k: enc[k].astype(np.int64) for k in self.input_names if k in enc}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(mask)
        if "position_ids" in self.input_names:  # decoders exported by optimum take them
            feeds["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        hidden = self.session.run(None, feeds)[0]
        maskf = mask.astype(np.float32)
        if self.info["pooling"] == "mean":
            return (hidden * maskf[..., None]).sum(1) / np.maximum(maskf.sum(1, keepdims=True), 1)
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # last real token
        return hidden[np.arange(len(texts)), last]

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.pooled(texts) @ self.head.T
