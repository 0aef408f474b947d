"""Training of the four methods under one compute budget, with resumable checkpoints.

All four come from relaykit's persistent TBPTT driver (``relaykit.PersistentRollout``, Algorithm 1):

* ``mlm``: one pass per step on fresh puzzles, a random fraction of the blank cells masked, relay off.
* ``rollout``: the persistent K-step teacher-forced rollout, relay off (the no-relay control).
* ``relay_sg``: the same rollout with relay on and h detached between steps.
* ``relay``: the same rollout with gradients through h across the K-step window (truncated BPTT).

The K-step methods start from the MLM checkpoint taken after ``preset.warm`` passes (an exact continuation: the
relay channel is zero-initialised) and train ``preset.budget - preset.warm`` more passes, so every method costs
``preset.budget`` passes in all. Legend: b batch, n = 81 cells, V = 10 tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import relaykit
from relaykit.policies import Policy, Threshold
from sudoku.data import PuzzleSet, augmented_batch
from sudoku.model import SudokuMDM, attach_relay
from sudoku.presets import METHODS, Preset


def build(preset: Preset, device: torch.device) -> tuple[SudokuMDM, relaykit.RelayModel]:
    """A fresh model with relay attached (zero channel: the bare model until relay is trained)."""
    model = SudokuMDM.from_config(preset.model).to(device)
    return model, attach_relay(model, kind=preset.channel, update=preset.update, empty=preset.empty)


def make_optimizer(relay: relaykit.RelayModel, preset: Preset) -> torch.optim.Optimizer:
    """AdamW over the backbone and (in its own group) the relay channel."""
    channel = {id(p) for p in relay.relay_parameters()}
    backbone = [p for p in relay.backbone.parameters() if id(p) not in channel]
    groups = [
        {"params": backbone, "lr": preset.lr, "base_lr": preset.lr},
        {"params": list(relay.relay_parameters()), "lr": preset.relay_lr, "base_lr": preset.relay_lr},
    ]
    return torch.optim.AdamW(groups, weight_decay=preset.weight_decay)


def lr_factor(passes: int, preset: Preset, method: str = "mlm") -> float:
    """Linear warm-up, then cosine decay to 10% over the whole budget; a function of passes spent, for all methods.

    With ``relay_schedule="restart"`` the K-step methods restart it at the warm start: warm-up, then a cosine over
    the ``budget - warm`` passes they train (the MLM phase they start from is unchanged).
    """
    start, length = 0, preset.budget
    if preset.relay_schedule == "restart" and method != "mlm" and passes >= preset.warm:
        start, length = preset.warm, preset.budget - preset.warm
    steps = passes - start + 1
    if steps <= preset.warmup:
        return steps / preset.warmup
    progress = min(1.0, (passes - start - preset.warmup) / max(1, length - preset.warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(optimizer: torch.optim.Optimizer, passes: int, preset: Preset, method: str = "mlm") -> None:
    """Set every group's learning rate to its ``base_lr`` times :func:`lr_factor`."""
    factor = lr_factor(passes, preset, method)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


class AtLeastFraction(Policy):
    """Training policy: commit every candidate with confidence >= ``threshold`` and at least the most confident
    ``fraction`` of the candidates (rounded up). Teacher forcing makes every commit correct, so a larger fraction
    only makes the rollout move faster: more puzzles per pass and states like those of low-NFE decoding.
    """

    def __init__(self, threshold: float, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.threshold, self.fraction = threshold, fraction
        self.base = Threshold(threshold)

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        commit = self.base(confidence, candidates)  # (b, n)
        k = torch.ceil(candidates.sum(-1, keepdim=True) * self.fraction)  # (b, 1)
        score = confidence.masked_fill(~candidates, -1.0)  # (b, n)
        rank = score.argsort(dim=-1, descending=True, stable=True).argsort(
            dim=-1
        )  # (b, n) rank of each cell in its row
        return commit | (candidates & (rank < k))

    def __repr__(self) -> str:
        return f"AtLeastFraction(threshold={self.threshold}, fraction={self.fraction})"


def training_policy(preset: Preset) -> Policy:
    if preset.train_fraction > 0:
        return AtLeastFraction(preset.train_threshold, preset.train_fraction)
    return Threshold(preset.train_threshold)


class AugmentedStream:
    """Endless training data for the driver: batches of (x0 (b, n), blanks (b, n)) from the pool under random
    symmetries. Re-iterable and seeded, so a resumed driver that skips the items it already read sees the same data.
    """

    def __init__(self, pool: PuzzleSet, batch: int, seed: int) -> None:
        self.pool, self.batch, self.seed = pool, batch, seed

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        rng = np.random.default_rng(self.seed)
        while True:
            yield augmented_batch(self.pool, self.batch, rng)


def make_driver(
    relay: relaykit.RelayModel, pool: PuzzleSet, preset: Preset, method: str, seed: int
) -> relaykit.PersistentRollout:
    """relaykit's persistent TBPTT driver (Algorithm 1) for one of the four methods."""
    stream = AugmentedStream(pool, preset.batch, seed=seed * 1000 + METHODS.index(method))
    k = 1 if method == "mlm" else preset.k
    policy = training_policy(preset)
    return relaykit.PersistentRollout(
        relay, stream, batch_size=preset.batch, method=method, k=k, policy=policy, seed=seed
    )


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train(
    method: str,
    preset: Preset,
    pool: PuzzleSet,
    ckpt_dir: Path,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> Path:
    """Train ``method`` to the full budget (resuming from its checkpoint if any); returns the final checkpoint."""
    from tqdm.auto import tqdm

    final = ckpt_dir / f"{method}.pt"
    running = ckpt_dir / f"{method}.running.pt"
    warm_path = ckpt_dir / "mlm_warm.pt"
    if final.exists():
        return final
    torch.manual_seed(seed)
    model, relay = build(preset, device)
    optimizer = make_optimizer(relay, preset)
    driver = make_driver(relay, pool, preset, method, seed)
    passes, log, wall = 0, [], 0.0
    source = running if running.exists() else (warm_path if method != "mlm" else None)
    if method != "mlm" and source is None:
        raise FileNotFoundError(f"{method} starts from {warm_path}; train mlm first")
    if source is not None:
        ck = torch.load(source, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        relay.channel.load_state_dict(ck["channel"])
        optimizer.load_state_dict(ck["optimizer"])
        for group, base in zip(optimizer.param_groups, (preset.lr, preset.relay_lr)):
            group["base_lr"] = base  # loading restores the warm start's hyperparameters; this preset's rule
        passes, wall = ck["passes"], ck["wall"]
        if source == running:  # an interrupted run of this method: restore the rollout rows, data position, RNG
            log = ck["log"]
            driver.load_state_dict(ck["driver"])

    def checkpoint(path: Path) -> None:
        _save(
            path,
            {
                "model": model.state_dict(),
                "channel": relay.channel.state_dict(),
                "optimizer": optimizer.state_dict(),
                "passes": passes,
                "wall": wall,
                "log": log,
                "driver": driver.state_dict(),
                "method": method,
            },
        )

    cost = driver.k  # forward + backward passes per optimiser step
    bar = tqdm(total=preset.budget, initial=passes, desc=f"train {method}", unit="pass", disable=not progress)
    model.train()
    since_ckpt = 0
    if method == "mlm" and preset.warm == 0 and passes == 0:
        checkpoint(warm_path)
    while passes + cost <= preset.budget:
        t0 = time.perf_counter()
        schedule(optimizer, passes, preset, method)
        res = driver.step()
        loss = res.loss / res.k  # mean over the window's steps: the same scale as one MLM pass
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        passes += cost
        since_ckpt += cost
        wall += time.perf_counter() - t0
        per_forward = float(res.committed.sum()) / (res.k * res.committed.shape[1])
        log.append((passes, loss.item(), per_forward))
        bar.update(cost)
        bar.set_postfix({"loss": f"{log[-1][1]:.3f}", "cells/fwd": f"{per_forward:.1f}"})
        if method == "mlm" and passes == preset.warm:
            checkpoint(warm_path)
        if since_ckpt >= preset.checkpoint_every:
            checkpoint(running)
            since_ckpt = 0
    bar.close()
    relay.save_pretrained(ckpt_dir / method)  # relaykit's folder: the channel and the trained backbone
    checkpoint(final)
    running.unlink(missing_ok=True)
    return final


def load_trained(path: Path, preset: Preset, device: torch.device) -> tuple[relaykit.RelayModel, dict[str, Any]]:
    """The relay model of a final checkpoint (eval mode) and the checkpoint's record (passes, wall, log).

    The model comes from the method's ``save_pretrained`` folder (``RelayModel.from_pretrained`` onto a fresh
    backbone), or from the training checkpoint for runs made before those folders were written.
    """
    ck = torch.load(path, map_location=device, weights_only=False)
    folder = path.with_suffix("")
    if (folder / "relay_config.json").is_file():
        model = SudokuMDM.from_config(preset.model).to(device)
        relay = relaykit.RelayModel.from_pretrained(model, folder)
    else:
        model, relay = build(preset, device)
        model.load_state_dict(ck["model"])
        relay.channel.load_state_dict(ck["channel"])
    model.eval()
    return relay, {k: ck[k] for k in ("passes", "wall", "log", "method")}
