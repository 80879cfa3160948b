"""The Hugging Face ``Trainer`` glue of the medication teacher.

Tokenized prompts as a dataset, dynamic padding, and a ``Trainer`` subclass whose checkpoints
hold only the trainable tensors and whose head may get its own learning rate; PR-AUC on the
validation prompts picks the best epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.backbone import pad_batch

log = logging.getLogger(__name__)


class EncodedPrompts(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], labels: np.ndarray):
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


@dataclass
class PadCollator:
    pad_token_id: int

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = pad_batch([b["input_ids"] for b in batch], self.pad_token_id)
        out["labels"] = torch.as_tensor(np.stack([b["labels"] for b in batch]), dtype=torch.float32)
        return out


def make_trainer_class() -> type:
    """``Trainer`` subclass, built lazily so importing this module stays cheap."""
    from safetensors.torch import save_file
    from transformers import Trainer

    class TeacherTrainer(Trainer):
        """Checkpoints hold only the trainable tensors (LoRA + head: kilobytes, not the
        frozen LLM), and the head may get its own learning rate."""

        def __init__(self, *args: Any, head_lr_multiplier: float = 1.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.head_lr_multiplier = head_lr_multiplier

        def create_optimizer(self):  # noqa: D102
            if self.optimizer is None:
                decay = set(self.get_decay_parameter_names(self.model))
                head = {id(p) for p in self.model.head.parameters()}
                groups: dict[tuple[float, float], list[nn.Parameter]] = {}
                for name, p in self.model.named_parameters():
                    if not p.requires_grad:
                        continue
                    lr = self.args.learning_rate
                    if id(p) in head:
                        lr *= self.head_lr_multiplier
                    wd = self.args.weight_decay if name in decay else 0.0
                    groups.setdefault((lr, wd), []).append(p)
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                params = [
                    {"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()
                ]
                self.optimizer = cls(params, **kwargs)
            return self.optimizer

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            tensors = {
                n: p.detach().to("cpu").contiguous()
                for n, p in self.model.named_parameters()
                if p.requires_grad
            }
            # Trainer._load_best_model loads this file with strict=False: frozen weights
            # simply stay as they are.
            save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            # Frozen weights are missing from our checkpoints on purpose.
            if load_result.unexpected_keys:
                log.warning("unexpected keys in checkpoint: %s", load_result.unexpected_keys)

    return TeacherTrainer


def make_progress_callback(desc: str = "teacher") -> Any:
    """A Trainer callback in place of the stock progress bar: named tqdm bars (training
    steps, validation batches) on the main process, and one readable line per epoch instead
    of the raw ``{'loss': ..., 'grad_norm': ...}`` dicts the stock callbacks print."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TeacherProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar = None
            self.eval_bar = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102
            if state.is_world_process_zero:
                self.bar = tqdm(
                    total=state.max_steps, desc=f"{desc} fine-tuning", unit="step",
                    mininterval=2.0, dynamic_ncols=True,
                )  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: D102
            if not state.is_world_process_zero or eval_dataloader is None:
                return
            if self.eval_bar is None:
                self.eval_bar = tqdm(
                    total=len(eval_dataloader), desc=f"{desc} validation", unit="batch",
                    leave=False, mininterval=2.0, dynamic_ncols=True,
                )  # fmt: skip
            self.eval_bar.update(1)

        def on_evaluate(self, args, state, control, **kwargs):  # noqa: D102
            if self.eval_bar is not None:
                self.eval_bar.close()
                self.eval_bar = None

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            if not state.is_world_process_zero or not logs:
                return
            epoch = logs.get("epoch", state.epoch)
            where = f"{desc} epoch {epoch:.2g}/{args.num_train_epochs:.2g}"
            if "eval_prauc" in logs:
                line = f"{where}: validation PR-AUC {logs['eval_prauc']:.4f}"
            elif "loss" in logs:
                line = f"{where}: training loss {logs['loss']:.4f}"
            elif "train_runtime" in logs:
                line = f"{desc}: fine-tuned in {logs['train_runtime']:.0f} s"
            else:
                return
            (self.bar.write if self.bar is not None else log.info)(line)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: D102
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TeacherProgress()


def replace_progress(trainer: Any, desc: str = "teacher") -> None:
    """Swap the stock progress/printer callbacks of `trainer` for `make_progress_callback`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(make_progress_callback(desc))


def logits_only(logits: Any, labels: Any) -> Any:
    """Keep only the logits for evaluation (the pooled states would just pile up)."""
    return logits[0] if isinstance(logits, tuple | list) else logits


def compute_metrics(pred: Any) -> dict[str, float]:
    from distill.metrics import prauc

    scores = np.asarray(pred.predictions, dtype=np.float64)
    return {"prauc": prauc(np.asarray(pred.label_ids) > 0.5, scores)}
