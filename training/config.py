"""``TrainConfig``: every setting of a domain-adaptation run, saved as JSON next to the model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

OBJECTIVE_NAMES = ("tsdae", "simcse", "ct", "pairs")
PAIR_SOURCES = ("title-body", "ict")
CT_VARIANTS = ("in-batch", "original")
POOLINGS = ("auto", "cls", "mean", "max")

# Defaults per objective, from the papers: TSDAE (Wang et al. 2021) lr 3e-5, batch 8; SimCSE (Gao et al.
# 2021, unsupervised BERT-base) lr 3e-5, batch 64; CT (Carlsson et al. 2021) lr 1e-5, batch 16;
# in-batch CT as in sentence-transformers' example, lr 5e-5, batch 32; corpus pairs with in-batch negatives
# (the objective all-MiniLM-L6-v2 was trained with) at sentence-transformers' default lr 2e-5, batch 32.
OBJECTIVE_DEFAULTS: dict[str, dict[str, float | int]] = {
    "tsdae": {"lr": 3e-5, "batch_size": 8},
    "simcse": {"lr": 3e-5, "batch_size": 64},
    "ct": {"lr": 1e-5, "batch_size": 16},
    "ct-in-batch": {"lr": 5e-5, "batch_size": 32},
    "pairs": {"lr": 2e-5, "batch_size": 32},
}


@dataclass
class TrainConfig:
    """One run: objective, data, base model, schedule, checkpoints, evaluation. ``None`` = objective default."""

    objective: str
    corpus: str
    base: str = "minilm"
    out: str = "runs/adapted"
    max_steps: int | None = None  # stops early when set; otherwise ``epochs`` passes over the sentences
    epochs: int = 1
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    max_seq_length: int = 128  # training length; sentences are short
    pooling: str = "auto"  # auto: keep a sentence-transformers base's pooling; else cls for TSDAE, mean otherwise
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # torch CPU threads; None keeps torch's default (1 is faster on a busy machine)
    # corpus -> sentences
    min_words: int = 5
    max_words: int = 64
    max_sentences: int | None = None  # for pairs: the first N usable documents
    # TSDAE
    noise: str = "delete"
    noise_ratio: float = 0.6
    noise_unit: str = "word"
    tie_weights: bool = True
    # SimCSE
    temperature: float = 0.05
    # Contrastive Tension
    ct_variant: str = "in-batch"
    pos_neg_ratio: int = 8  # original CT: one identical pair for every pos_neg_ratio pairs
    # corpus pairs: "title-body" (title -> text) or "ict" (a sentence -> the rest of its document)
    pair_source: str = "title-body"
    # checkpoints and resume
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    # evaluation before/after on a BEIR split
    eval_beir: str | None = None
    eval_split: str = "test"
    eval_max_seq_length: int = 256
    eval_batch_size: int = 32
    eval_cache_dir: str | None = None  # caches the base model's corpus embeddings between runs
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective {self.objective!r}: expected one of {OBJECTIVE_NAMES}")
        if self.ct_variant not in CT_VARIANTS:
            raise ValueError(f"ct_variant {self.ct_variant!r}: expected one of {CT_VARIANTS}")
        if self.pair_source not in PAIR_SOURCES:
            raise ValueError(f"pair_source {self.pair_source!r}: expected one of {PAIR_SOURCES}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: expected one of {POOLINGS}")
        for name in ("max_steps", "batch_size", "checkpoint_every", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def defaults_key(self) -> str:
        return "ct-in-batch" if self.objective == "ct" and self.ct_variant == "in-batch" else self.objective

    @property
    def effective_lr(self) -> float:
        return float(self.lr if self.lr is not None else OBJECTIVE_DEFAULTS[self.defaults_key]["lr"])

    @property
    def effective_batch_size(self) -> int:
        return int(self.batch_size if self.batch_size is not None else OBJECTIVE_DEFAULTS[self.defaults_key]["batch_size"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a dict, naming unknown fields instead of ignoring them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
        return cls.from_dict(data, where=str(path))


# Fields that may differ between a run and its resumption (they do not change what is trained).
RESUME_MAY_CHANGE = frozenset({"resume", "show_progress", "device", "checkpoint_every", "keep_checkpoints",
                               "eval_beir", "eval_split", "eval_max_seq_length", "eval_batch_size",
                               "eval_cache_dir", "out", "threads"})
