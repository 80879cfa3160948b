"""The shipped student's vocabulary cut to the codes its training patients had.

A run's vocabularies cover every visit of the cohort, the test patients' too, so each fold's
student carries rows for diagnosis and procedure codes it never trained on: wide rows at zero,
embedding rows still at their random start. On the device such a code would count as known
while it tells the model nothing (or noise). `prune_student` drops those rows: the app leaves
such a code out of the input (as every unknown code, `contract.layout`) and reports it, and the
bundle is smaller.
The kept ids come from the run (``fold<k>/trained_ids.json``, every id found in the samples the
fold's students trained on); `<pad>`, `<unk>`, the medications (one per label) and the profile
are always kept.

`remap_arrays` gives held-out arrays the pruned ids (a dropped id becomes `<pad>`, i.e. left
out: the student masks pads wherever they sit), so parity and the int8 metrics are measured on
the inputs the device builds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from contract.layout import PAD_ID, UNK_ID

__all__ = ["Pruning", "prune_student", "prune_vocab", "remap_arrays"]

# array name -> (vocabulary, StudentConfig size field)
PRUNED = {"dx": ("diagnoses", "n_diagnoses"), "px": ("procedures", "n_procedures")}


class Pruning:
    """Old id -> new id for the diagnoses and procedures (`<pad>` for a dropped id: left out)."""

    def __init__(self, sizes: Mapping[str, int], keep: Mapping[str, Sequence[int]]) -> None:
        self.maps: dict[str, np.ndarray] = {}
        self.kept: dict[str, np.ndarray] = {}
        for kind, size in sizes.items():
            ids = sorted({int(i) for i in keep.get(kind, ())} | {PAD_ID, UNK_ID})
            if ids[-1] >= size:
                raise ValueError(f"trained {kind} id {ids[-1]} is outside the vocabulary ({size})")
            table = np.full(size, PAD_ID, dtype=np.int64)
            table[ids] = np.arange(len(ids))
            self.maps[kind] = table
            self.kept[kind] = np.asarray(ids, dtype=np.int64)

    def summary(self) -> dict[str, dict[str, int]]:
        return {k: {"kept": len(v), "of": len(self.maps[k])} for k, v in self.kept.items()}


def prune_student(model, config, keep: Mapping[str, Sequence[int]]):
    """-> (pruned LeaderStudent in eval mode, its StudentConfig, `Pruning`)."""
    import torch

    from distill.medication.student import LeaderStudent, StudentConfig

    sizes = {kind: getattr(config, field) for kind, field in PRUNED.values()}
    pruning = Pruning(sizes, keep)
    new_cfg = StudentConfig.from_dict(
        {**config.to_dict(), **{f: len(pruning.kept[k]) for k, f in PRUNED.values()}}
    )
    # rows of the shared tables ([diagnoses | procedures | medications | profile]) to keep
    rows = np.concatenate(
        [
            pruning.kept["diagnoses"],
            config.n_diagnoses + pruning.kept["procedures"],
            np.arange(config.n_diagnoses + config.n_procedures,
                      config.n_diagnoses + config.n_procedures + config.n_medications
                      + config.n_profile),
        ]
    )  # fmt: skip
    state = model.state_dict()
    index = torch.as_tensor(rows)
    for name in ("embed.weight", "wide.weight"):
        if name in state:
            state[name] = state[name].index_select(0, index).clone()
    pruned = LeaderStudent(new_cfg)
    pruned.load_state_dict(state)
    return pruned.eval(), new_cfg, pruning


def remap_arrays(arrays: Mapping[str, np.ndarray], pruning: Pruning) -> dict[str, np.ndarray]:
    """`arrays` with their diagnosis and procedure ids renumbered by `pruning` (copies)."""
    out = dict(arrays)
    for name, (kind, _) in PRUNED.items():
        out[name] = pruning.maps[kind][np.asarray(arrays[name])]
    return out


def prune_vocab(tokens: Mapping[str, int], pruning: Pruning, kind: str) -> dict[str, int]:
    """A vocabulary JSON (token -> id) cut and renumbered as `pruning` says for `kind`."""
    table = pruning.maps[kind]
    kept = set(pruning.kept[kind].tolist())
    return {t: int(table[i]) for t, i in tokens.items() if i in kept}
