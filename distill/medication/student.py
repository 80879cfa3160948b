"""The LEADER(S)-style student: a small visit-sequence model over code ids, in one file.

Inputs (see `contract.layout`; B = batch, V = visit slots, right-aligned, current at V-1):

    dx [B, V, Cd], px [B, V, Cp], med [B, V, Cm]   int64 code ids, 0 = pad
    visit_mask [B, V]                              float, 1.0 where a visit exists
    profile [B, P]                                 int64 "field=value" token ids, 0 = pad

Model:

1. one shared embedding table for the four token kinds (their vocabularies concatenated with
   offsets); pads are masked out with a float mask computed from id == 0 before offsetting;
2. per visit, each code set is a masked mean of its embeddings through a per-kind Linear + GELU;
   the visit vector is Linear(concat(dx, px, med)) plus a learned embedding of the slot's
   distance from the current visit (0 = current), so extra left padding changes nothing;
3. a profile token (masked mean of profile embeddings -> Linear) is prepended to the visits; it
   stands in for missing medication history (a first visit reads [profile, current visit]);
4. `visit_layers` pre-norm self-attention blocks, written by hand with an additive -1e4 key mask
   so the graph exports to ONNX with plain ops (no TransformerEncoder fast path, no EmbeddingBag,
   no boolean indexing, no data-dependent Python control flow);
5. features = Linear(concat(current visit output, profile token output)) -> `dim`: the vector
   distilled towards the teacher (through `distill.layers.Projector`); logits = MLP head(features);
6. with `repeat_head`, per-drug weights on "given at the previous visit" and "share of earlier
   visits" are added to the logits (a learned previous_visit rule); with `wide`, a per-(code, drug)
   table summed over the current diagnoses and procedures, the previous visit's drugs and the
   profile (a logistic model over code ids, which is what ~100 patients can support); with
   `wide_codes="sqrt"` (or "mean") the current visit's code rows are summed and multiplied by
   (scale / n)^(1/2) (or ^1), so that few codes still count.

`profile_embedding` and `medication_set_embedding` give the two sides of LEADER's profile
alignment (an InfoNCE loss defined elsewhere).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from contract.files import atomic_path
from distill.layers import MASK_VALUE, SelfAttention

FORMAT = "pocketrec-leader-student/1"
# StudentConfig.wide_codes -> the power of (scale / n) the current codes' wide rows are read with
WIDE_CODES = {"sum": 0.0, "sqrt": 0.5, "mean": 1.0}


@dataclass(frozen=True)
class StudentConfig:
    n_diagnoses: int  # vocabulary sizes, <pad> and <unk> included
    n_procedures: int
    n_medications: int
    n_profile: int
    n_labels: int
    dim: int = 64
    heads: int = 4
    visit_layers: int = 2
    dropout: float = 0.1
    teacher_dim: int = 384
    max_visits: int = 10
    # learned per-drug weights on "was it given last visit / how often before": on ICU data
    # repeating the previous visit's drugs is a strong baseline the model should not have to
    # rediscover from embeddings
    repeat_head: bool = True
    # a wide (logistic) path: one learned weight per (code, drug) for the current visit's
    # diagnoses and procedures, the previous visit's medications and the profile, summed
    # (Gather + mask + ReduceSum). With ~100 patients a linear model over code ids is what the
    # data can support; the deep path adds what it can on top. Zero-initialised.
    wide: bool = True
    # how the wide path reads the current visit's diagnoses and procedures: "sum" of their rows,
    # or that sum times (wide_codes_scale / n)^p for n codes: "sqrt" (p = 1/2) or "mean" (p = 1).
    # The scale is the training visits' mean number of codes, so a typical visit reads as with
    # "sum", while a visit entered with one or two codes counts more than a twentieth of a
    # typical visit ("sqrt": about a quarter at one code; "mean": all of it, which over-trusts
    # single codes: worse than popularity on validation patients' primary diagnoses alone)
    wide_codes: str = "sum"
    wide_codes_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_diagnoses", "n_procedures", "n_medications", "n_profile"):
            _check_int(self, name, 2)  # at least <pad>, <unk>
        for name in ("n_labels", "dim", "heads", "visit_layers", "teacher_dim", "max_visits"):
            _check_int(self, name, 1)
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if isinstance(self.dropout, bool) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if self.wide_codes not in WIDE_CODES:
            raise ValueError(
                f"wide_codes must be one of {', '.join(WIDE_CODES)}; got {self.wide_codes!r}"
            )
        scale = self.wide_codes_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError(f"wide_codes_scale must be a number > 0; got {scale!r}")

    @classmethod
    def from_vocabs(cls, vocabs, **kwargs) -> StudentConfig:
        """Sizes from a `distill.data.tensors.MedVocabs`; other fields from `kwargs`."""
        return cls(
            n_diagnoses=len(vocabs.diagnoses),
            n_procedures=len(vocabs.procedures),
            n_medications=len(vocabs.medications),
            n_profile=len(vocabs.profile),
            n_labels=len(vocabs.labels),
            **kwargs,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        # files written before the repeat head / the wide path existed describe a model
        # without them
        data = {"repeat_head": False, "wide": False, **data}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown StudentConfig fields: {', '.join(extra)}")
        return cls(**data)


def _check_int(cfg: StudentConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"StudentConfig.{name} must be an integer >= {low}; got {value!r}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [..., N, D] over N where mask [..., N] is 1.0; all-pad sets give zeros."""
    total = (x * mask.unsqueeze(-1)).sum(dim=-2)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return total / count


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), bias))
        return x + self.mlp(self.ln2(x))


class LeaderStudent(nn.Module):
    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.dim
        # one table: [diagnoses | procedures | medications | profile]
        self.dx_offset = 0
        self.px_offset = c.n_diagnoses
        self.med_offset = c.n_diagnoses + c.n_procedures
        self.profile_offset = c.n_diagnoses + c.n_procedures + c.n_medications
        self.embed = nn.Embedding(self.profile_offset + c.n_profile, d)
        self.dx_set = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.px_set = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.med_set = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.visit_proj = nn.Linear(3 * d, d)
        self.slot_embed = nn.Embedding(c.max_visits, d)  # index = distance from current visit
        self.profile_proj = nn.Linear(d, d)
        self.med_align = nn.Linear(d, d)  # medication set -> profile space, for alignment
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(d, c.heads, c.dropout) for _ in range(c.visit_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.feature = nn.Linear(2 * d, d)
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Dropout(c.dropout), nn.Linear(d, c.n_labels)
        )
        if c.repeat_head:
            # label l is medication id l + 2: a fixed table turns history ids into multi-hots
            table = torch.zeros(c.n_medications, c.n_labels)
            n = min(c.n_medications - 2, c.n_labels)
            table[2 : 2 + n, :n] = torch.eye(n)
            self.register_buffer("med_to_label", table, persistent=False)
            self.repeat_last = nn.Parameter(torch.zeros(c.n_labels))
            self.repeat_mean = nn.Parameter(torch.zeros(c.n_labels))
        if c.wide:
            self.wide = nn.Embedding(self.profile_offset + c.n_profile, c.n_labels)
            nn.init.zeros_(self.wide.weight)

    def _code_set(self, ids: Tensor, offset: int) -> Tensor:
        """ids [..., N] -> masked mean of the shared embeddings [..., D]."""
        mask = (ids != 0).to(self.embed.weight.dtype)  # before offsetting: pad is 0 of any kind
        return masked_mean(self.embed(ids + offset), mask)

    def profile_embedding(self, profile: Tensor) -> Tensor:
        """The profile token [B, D] (before the visit encoder) from profile ids [B, P]."""
        return self.profile_proj(self._code_set(profile, self.profile_offset))

    def medication_set_embedding(self, med_ids: Tensor) -> Tensor:
        """A medication set [B, M] (ids, 0-padded) -> [B, D], to align with the profile token."""
        return self.med_align(self._code_set(med_ids, self.med_offset))

    def forward(
        self, dx: Tensor, px: Tensor, med: Tensor, visit_mask: Tensor, profile: Tensor
    ) -> tuple[Tensor, Tensor]:
        """-> (logits [B, n_labels], features [B, dim])."""
        visits = torch.cat(
            [
                self.dx_set(self._code_set(dx, self.dx_offset)),
                self.px_set(self._code_set(px, self.px_offset)),
                self.med_set(self._code_set(med, self.med_offset)),
            ],
            dim=-1,
        )  # [B, V, 3D]
        n_visits = dx.shape[1]
        distance = torch.arange(n_visits, device=dx.device).flip(0)
        distance = distance.clamp(max=self.config.max_visits - 1)
        x = self.visit_proj(visits) + self.slot_embed(distance)  # [B, V, D]
        token = self.profile_embedding(profile).unsqueeze(1)  # [B, 1, D]
        x = self.drop(torch.cat([token, x], dim=1))  # [B, 1 + V, D]

        mask = visit_mask.to(x.dtype)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # profile always kept
        bias = ((1.0 - keep) * MASK_VALUE)[:, None, None, :]  # [B, 1, 1, 1 + V]
        for block in self.blocks:
            x = block(x, bias)
        x = self.ln_f(x)

        features = self.feature(torch.cat([x[:, -1], x[:, 0]], dim=-1))
        logits = self.head(features)
        if self.config.repeat_head:
            logits = logits + self._repeat_logits(med, mask)
        if self.config.wide:
            logits = logits + self._wide_logits(dx, px, med, profile)
        return logits, features

    def _wide_sum(self, ids: Tensor, offset: int) -> Tensor:
        """ids [B, N] -> sum of their wide rows [B, L] (pads, id 0, left out)."""
        mask = (ids != 0).to(self.wide.weight.dtype)
        return (self.wide(ids + offset) * mask.unsqueeze(-1)).sum(dim=1)

    def _wide_logits(self, dx: Tensor, px: Tensor, med: Tensor, profile: Tensor) -> Tensor:
        """Linear logits over code ids: current dx and px, previous visit's drugs, profile."""
        # shift by one slot so that slot V-1 holds the previous visit for any V >= 1
        prev_med = torch.cat([torch.zeros_like(med[:, :1]), med[:, :-1]], dim=1)[:, -1]
        codes = self._wide_sum(dx[:, -1], self.dx_offset)
        codes = codes + self._wide_sum(px[:, -1], self.px_offset)
        if self.config.wide_codes != "sum":
            dtype = self.wide.weight.dtype
            n = (dx[:, -1] != 0).to(dtype).sum(1) + (px[:, -1] != 0).to(dtype).sum(1)
            factor = self.config.wide_codes_scale / n.clamp(min=1.0)
            if self.config.wide_codes == "sqrt":
                factor = factor.sqrt()
            codes = codes * factor.unsqueeze(-1)
        return (
            codes
            + self._wide_sum(prev_med, self.med_offset)
            + self._wide_sum(profile, self.profile_offset)
        )

    def _repeat_logits(self, med: Tensor, mask: Tensor) -> Tensor:
        """Per-drug weights times (in the previous visit, share of earlier visits)."""
        hot = F.embedding(med, self.med_to_label).amax(dim=2)  # [B, V, L]; pad rows are zero
        # shift by one slot so that slot V-1 holds the previous visit for any V >= 1
        hist = torch.cat([torch.zeros_like(hot[:, :1]), hot[:, :-1]], dim=1)
        n_hist = (mask.sum(dim=1, keepdim=True) - 1.0).clamp(min=1.0)  # current visit excluded
        return self.repeat_last * hist[:, -1] + self.repeat_mean * hist.sum(dim=1) / n_hist


def save_student(model: LeaderStudent, config: StudentConfig, path: Path) -> None:
    """One safetensors file: the state dict, with the config as JSON in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_student(path: Path) -> tuple[LeaderStudent, StudentConfig]:
    """Rebuild the model from the file's config alone; returned in eval mode on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={metadata.get('format')!r})")
    config = StudentConfig.from_dict(json.loads(metadata["config"]))
    model = LeaderStudent(config)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, config
