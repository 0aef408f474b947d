"""Presets of the Sudoku study: one code path, three sizes. Every field can be overridden with ``--set k=v``.

Compute is counted in *passes*: one forward + backward of the model on one batch. MLM spends one pass per
optimiser step; the K-step methods (rollout, relay_sg, relay) spend K. Every method gets the same ``budget``;
the K-step methods start from the MLM checkpoint taken after ``warm`` passes, and those passes are counted in
their budget (they train for ``budget - warm`` more passes). So all four models cost the same to train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sudoku.model import ModelConfig

METHODS = ("mlm", "rollout", "relay_sg", "relay")


@dataclass
class Preset:
    """Everything a run depends on (saved next to the checkpoints; a resumed run must match it)."""

    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train_puzzles: int = 3000  # generated pool, augmented by random symmetries at every draw
    eval_puzzles: int = 200
    givens: tuple[int, int] = (26, 30)  # clue count range of generated puzzles (train and eval)
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50  # optimiser steps of linear learning-rate warm-up (MLM phase only)
    budget: int = 1800  # passes per method, warm start included
    warm: int = 900  # MLM passes the K-step methods start from
    k: int = 2  # TBPTT window
    train_threshold: float = 0.9  # unmasking policy during the rollout (confidence threshold)
    train_fraction: float = 0.2  # ... and at least this fraction of the masked cells per step (0: threshold only)
    relay_lr: float = 1e-4  # chosen on the validation puzzles, 3 seeds (docs/sudoku-study.md); 1e-3 before
    relay_schedule: str = "continue"  # K-step phase: "continue" the cosine, or "restart" it (warm-up + cosine)
    channel: str = "linear"
    update: str = "masked"  # where h is written: "masked" (still-masked cells) or "all" (Algorithm 1 as printed)
    empty: str = "skip"  # relay term where no state exists: "skip" (none) or "zero" (R(0), Algorithm 1's h_0 = 0)
    thresholds: tuple[float, ...] = (0.7, 0.85, 0.95, 0.99)  # 0.85 is the paper's tau = 0.15
    eval_batch: int = 200
    val_puzzles: int = 200  # validation puzzles (another seed than the evaluation set): recipes are chosen here
    hard_puzzles: int = 0  # extra evaluation puzzles with ``hard_givens`` clues, reported as subset "hard"
    hard_givens: tuple[int, int] = (22, 24)
    checkpoint_every: int = 100  # passes between checkpoints

    def with_overrides(self, pairs: list[str]) -> Preset:
        """A copy with ``key=value`` overrides; model fields (width, layers, heads, ff_mult) may be given directly."""
        top = {f.name: f for f in dataclasses.fields(self)}
        mod = {f.name for f in dataclasses.fields(ModelConfig)}
        changes: dict[str, object] = {}
        model_changes: dict[str, object] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {pair!r}")
            if key in mod:
                model_changes[key] = _parse(raw, getattr(self.model, key))
            elif key in top and key not in ("name", "model"):
                changes[key] = _parse(raw, getattr(self, key))
            else:
                known = sorted([k for k in top if k not in ("name", "model")] + list(mod))
                raise ValueError(f"--set: unknown key {key!r}; known keys: {', '.join(known)}")
        preset = dataclasses.replace(self, **changes)
        if model_changes:
            preset = dataclasses.replace(preset, model=dataclasses.replace(self.model, **model_changes))
        preset.check()
        return preset

    def check(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if not 0 <= self.warm < self.budget:
            raise ValueError(f"warm must be in 0..budget-1 passes, got warm={self.warm}, budget={self.budget}")
        if (self.budget - self.warm) < self.k:
            raise ValueError(f"budget - warm = {self.budget - self.warm} passes is less than one K={self.k} step")

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


#: settings with a fixed set of values
CHOICES = {
    "relay_schedule": ("continue", "restart"),
    "channel": ("linear", "mlp", "gated"),
    "update": ("masked", "all"),
    "empty": ("skip", "zero"),
}


def _parse(raw: str, current: object) -> object:
    if isinstance(current, tuple):
        kind = type(current[0]) if current else float
        return tuple(kind(v) for v in raw.split(",") if v)
    if isinstance(current, bool):
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"--set expects a boolean (true/false, 1/0, yes/no), got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    return type(current)(raw)


#: what each --set key means (run.py --help prints these with each preset's values)
HELP = {
    "train_puzzles": "generated training pool (augmented by random symmetries at every draw)",
    "eval_puzzles": "evaluation puzzles (reported; never used to choose a recipe)",
    "val_puzzles": "validation puzzles, another generator seed: choose recipes on subset 'val'",
    "hard_puzzles": "extra evaluation puzzles with hard_givens clues, reported as subset 'hard' (0: none)",
    "hard_givens": "clue-count range of the hard puzzles",
    "givens": "clue-count range of generated training, evaluation and validation puzzles",
    "batch": "training batch",
    "lr": "backbone learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "warmup": "optimiser steps of linear warm-up",
    "budget": "training passes per method (forward + backward), warm start included",
    "warm": "MLM passes the K-step methods start from",
    "k": "TBPTT window (passes per optimiser step of the K-step methods)",
    "train_threshold": "training rollout: commit cells with confidence >= this ...",
    "train_fraction": "... and at least this fraction of the masked cells per step (0: threshold only)",
    "relay_lr": "learning rate of the relay channel (its own optimiser group)",
    "relay_schedule": "K-step phase: 'continue' the MLM cosine, or 'restart' (warm-up + cosine over budget - warm)",
    "channel": "relay channel kind: linear | mlp | gated",
    "update": "where h is written: masked (still-masked cells) | all (every cell, Algorithm 1 as printed)",
    "empty": "relay term where no state exists: skip (none) | zero (R(0), Algorithm 1's h_0 = 0)",
    "thresholds": "decoding confidence thresholds (evaluation only)",
    "eval_batch": "puzzles decoded at once (evaluation only)",
    "checkpoint_every": "passes between checkpoints",
    "width": "model width d",
    "layers": "encoder layers",
    "heads": "attention heads",
    "ff_mult": "feed-forward width multiple",
    "tied": "tie the token embedding and the output head (Emb = UnEmb^T)",
}


PRESETS = {
    # a first look: a small model, a few minutes on a laptop
    "quick": Preset(
        name="quick",
        model=ModelConfig(width=96, layers=3, heads=4),
        train_puzzles=500,
        eval_puzzles=100,
        givens=(30, 34),
        budget=800,
        warm=400,
        checkpoint_every=50,
        eval_batch=100,
        val_puzzles=100,
        thresholds=(0.7, 0.9, 0.99),
    ),
    # the README's main command: <= 30 minutes on 2 CPU cores. Batch 32 and 1500 passes (warm 750) since 2026-11-30:
    # batch 64 and 1800 passes took about 45 min on 2 cores of an AMD EPYC (0.45-0.51 s per pass); the H200 runs in
    # docs/results/sudoku-h200-default used --set batch=64 budget=1800 warm=900
    "default": Preset(name="default", batch=32, budget=1500, warm=750, hard_puzzles=100),
    # for one GPU, sized for a borrowed machine: about 5 minutes of an H200 shared with the default preset's seeds
    "gpu": Preset(
        name="gpu",
        model=ModelConfig(width=256, layers=8, heads=8),
        train_puzzles=20000,
        eval_puzzles=1000,
        givens=(22, 28),
        batch=128,
        lr=5e-4,
        relay_lr=5e-5,  # a tenth of the backbone's, as the default preset's chosen recipe (not run at this size)
        warmup=200,
        budget=10000,
        warm=5000,
        eval_batch=500,
        val_puzzles=1000,
        hard_puzzles=500,
        checkpoint_every=1000,
        thresholds=(0.5, 0.7, 0.85, 0.95, 0.99),
    ),
}

#: one line per preset for ``run.py --help``
DESCRIPTIONS = {
    "quick": "a first look: d=96, 3 layers, 800 passes per method, easier puzzles; ~4 min on 2 free cores",
    "default": "the study: d=128, 4 layers, 1500 passes per method (warm 750) at batch 32, 26-30 givens, a "
    "22-24-given 'hard' subset; about 28 min on 2 cores",
    "gpu": "for a GPU: d=256, 8 layers, 10000 passes per method (warm 5000) at batch 128, harder puzzles (22-28 "
    "givens), 1000 evaluation / 1000 validation / 500 hard puzzles; ~5 min on an H200",
}
