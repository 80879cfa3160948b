"""Run configuration of the data stage; the other stages keep theirs beside their code
(TeacherConfig in distill/backbone.py, StudentConfig in distill/medication/student.py,
DistillConfig in distill/medication/train.py, TensorConfig in contract/layout.py). Every config
is a frozen dataclass saved as JSON with its run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from distill.data.samples import PROTOCOLS


@dataclass(frozen=True)
class DataConfig:
    source: str | None = "mimic4-demo"  # an embedded demo, or None with path + fmt
    path: str | None = None
    fmt: str | None = None
    protocol: str = "all-visits"
    folds: int = 5
    seed: int = 0  # 0 = the published split formula (see distill.data.splits)
    require_procedures: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if (self.source is None) == (self.path is None):
            raise ValueError("give exactly one of source or path")
        if self.path is not None and self.fmt is None:
            raise ValueError("a path needs its format (mimic3, mimic4, synthea)")

    def to_dict(self) -> dict:
        return asdict(self)
