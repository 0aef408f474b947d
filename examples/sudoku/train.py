"""Training of the four methods under one compute budget, with resumable checkpoints.

* ``mlm``: one pass per step, a random fraction of the blank cells masked, relay off.
* ``rollout``: Algorithm 1's persistent K-step teacher-forced rollout, relay off (the no-relay control).
* ``relay_sg``: the same rollout with relay on and h detached between steps.
* ``relay``: the same rollout with gradients through h across the K-step window (truncated BPTT).

The K-step methods start from the MLM checkpoint taken after ``preset.warm`` passes (an exact continuation: the
relay channel is zero-initialised) and train ``preset.budget - preset.warm`` more passes, so every method costs
``preset.budget`` passes in all. Legend: b batch, n = 81 cells, V = 10 tokens.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import relaykit
from relaykit.policies import Threshold, commit_step
from sudoku.data import PuzzleSet, augmented_batch
from sudoku.model import MASK, SudokuMDM, attach_relay
from sudoku.presets import Preset


def build(preset: Preset, device: torch.device) -> tuple[SudokuMDM, relaykit.RelayModel]:
    """A fresh model with relay attached (zero channel: the bare model until relay is trained)."""
    model = SudokuMDM.from_config(preset.model).to(device)
    return model, attach_relay(model, kind=preset.channel, update=preset.update)


def make_optimizer(relay: relaykit.RelayModel, preset: Preset) -> torch.optim.Optimizer:
    """AdamW over the backbone and (in its own group) the relay channel."""
    channel = {id(p) for p in relay.relay_parameters()}
    backbone = [p for p in relay.backbone.parameters() if id(p) not in channel]
    groups = [
        {"params": backbone, "lr": preset.lr, "base_lr": preset.lr},
        {"params": list(relay.relay_parameters()), "lr": preset.relay_lr, "base_lr": preset.relay_lr},
    ]
    return torch.optim.AdamW(groups, weight_decay=preset.weight_decay)


def schedule(optimizer: torch.optim.Optimizer, passes: int, preset: Preset) -> None:
    """Linear warm-up, then cosine decay to 10% over the whole budget; a function of passes spent, for all methods."""
    steps = passes + 1
    if steps <= preset.warmup:
        factor = steps / preset.warmup
    else:
        progress = min(1.0, (passes - preset.warmup) / max(1, preset.budget - preset.warmup))
        factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def mlm_loss(backbone: SudokuMDM, x0: Tensor, maskable: Tensor, generator: torch.Generator) -> Tensor:
    """One MLM pass: mask each blank with a per-puzzle ratio r ~ U(0, 1] (at least one), CE on masked cells."""
    b, n = x0.shape
    ratio = 1.0 - torch.rand(b, 1, generator=generator, device=x0.device)  # (b, 1) in (0, 1]
    masked = maskable & (torch.rand(b, n, generator=generator, device=x0.device) < ratio)  # (b, n)
    first = (torch.rand(b, n, generator=generator, device=x0.device) * maskable).argmax(-1)  # a random blank
    masked[torch.arange(b), first] |= maskable[torch.arange(b), first]
    z = torch.where(masked, torch.full_like(x0, MASK), x0)  # (b, n)
    logits = backbone(z)  # (b, n, V)
    return F.cross_entropy(logits[masked], x0[masked])


class Rollout:
    """Algorithm 1's persistent state: per-sample (x0, z, h) carried across optimiser steps.

    A sample whose board is fully unmasked is replaced by a new puzzle with every blank masked and h = 0.
    """

    def __init__(self, relay: relaykit.RelayModel, pool: PuzzleSet, preset: Preset, method: str) -> None:
        self.relay, self.pool, self.preset, self.method = relay, pool, preset, method
        self.policy = Threshold(preset.train_threshold)
        self.x0: Tensor | None = None
        self.z: Tensor | None = None
        self.state: relaykit.RelayState | None = None

    def refill(self, rng: np.random.Generator, device: torch.device) -> None:
        b = self.preset.batch
        if self.x0 is None:
            x0, blank = augmented_batch(self.pool, b, rng)
            self.x0, self.z = x0.to(device), torch.where(blank.to(device), MASK, x0.to(device))
            return
        assert self.z is not None
        done = (self.z != MASK).all(-1)  # (b,)
        if bool(done.any()):
            rows = done.nonzero().squeeze(-1)
            x0, blank = augmented_batch(self.pool, len(rows), rng)
            x0, blank = x0.to(device), blank.to(device)
            self.x0 = self.x0.index_copy(0, rows, x0)
            self.z = self.z.index_copy(0, rows, torch.where(blank, MASK, x0))
            if self.state is not None:
                self.state = self.state.reset(rows)

    def step(self, rng: np.random.Generator, device: torch.device) -> tuple[Tensor, float]:
        """K teacher-forced steps; returns the mean loss (to backpropagate) and the cells committed per forward."""
        self.refill(rng, device)
        assert self.x0 is not None and self.z is not None
        x0, z, state = self.x0, self.z, self.state
        losses, committed = [], 0
        for _ in range(self.preset.k):
            masked = z == MASK  # (b, n)
            if self.method == "rollout":
                with self.relay.disabled():
                    logits = self.relay(z).logits  # (b, n, V)
            else:
                out = self.relay(z, state=state)
                logits, state = out.logits, out.state
                if self.method == "relay_sg" and state is not None:
                    state = state.detach()
            losses.append(F.cross_entropy(logits[masked], x0[masked]) if bool(masked.any()) else logits.sum() * 0)
            commit, _ = commit_step(self.policy, logits.detach(), z, mask_token_id=MASK)
            z = torch.where(commit, x0, z)  # teacher forcing: committed cells get the solution
            committed += int(commit.sum())
        self.z = z
        self.state = state.detach() if state is not None else None  # truncate BPTT at the window's end
        return torch.stack(losses).mean(), committed / (self.preset.k * z.shape[0])

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "x0": self.x0,
            "z": self.z,
            "hidden": None if s is None else s.hidden,
            "filled": None if s is None else s.filled,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.x0, self.z = d["x0"], d["z"]
        h = d["hidden"]
        self.state = None if h is None else relaykit.RelayState(h, d["filled"])


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
    rollout = Rollout(relay, pool, preset, method) if method != "mlm" else None
    rng = np.random.default_rng([seed, sum(map(ord, method))])
    gen = torch.Generator(device=device).manual_seed(seed)
    passes, log, wall = 0, [], 0.0
    source = running if running.exists() else (warm_path if method != "mlm" else None)
    if method != "mlm" and source is None:
        raise FileNotFoundError(f"{method} starts from {warm_path}; train mlm first")
    if source is not None:
        ck = torch.load(source, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        relay.channel.load_state_dict(ck["channel"])
        optimizer.load_state_dict(ck["optimizer"])
        passes, wall = ck["passes"], ck["wall"]
        if source == running:  # an interrupted run of this method: restore everything
            log = ck["log"]
            rng.bit_generator.state = ck["rng"]
            gen.set_state(ck["gen"].cpu())
            torch.set_rng_state(ck["torch_rng"])
            if rollout is not None:
                rollout.load_state_dict(ck["rollout"])

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
                "rng": rng.bit_generator.state,
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "rollout": rollout.state_dict() if rollout is not None else None,
                "method": method,
            },
        )

    cost = 1 if method == "mlm" else preset.k
    bar = tqdm(total=preset.budget, initial=passes, desc=f"train {method}", unit="pass", disable=not progress)
    model.train()
    since_ckpt = 0
    if method == "mlm" and preset.warm == 0 and passes == 0:
        checkpoint(warm_path)
    while passes + cost <= preset.budget:
        t0 = time.perf_counter()
        schedule(optimizer, passes, preset)
        if rollout is None:
            x0, blank = augmented_batch(pool, preset.batch, rng)
            loss = mlm_loss(model, x0.to(device), blank.to(device), gen)
            per_forward = float("nan")
        else:
            loss, per_forward = rollout.step(rng, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        passes += cost
        since_ckpt += cost
        wall += time.perf_counter() - t0
        log.append((passes, loss.item(), per_forward))
        bar.update(cost)
        post = {"loss": f"{log[-1][1]:.3f}"}
        if rollout is not None:
            post["cells/fwd"] = f"{per_forward:.1f}"
        bar.set_postfix(post)
        if method == "mlm" and passes == preset.warm:
            checkpoint(warm_path)
        if since_ckpt >= preset.checkpoint_every:
            checkpoint(running)
            since_ckpt = 0
    bar.close()
    checkpoint(final)
    running.unlink(missing_ok=True)
    return final


def load_trained(path: Path, preset: Preset, device: torch.device) -> tuple[relaykit.RelayModel, dict[str, Any]]:
    """The relay model of a final checkpoint (eval mode) and the checkpoint's record (passes, wall, log)."""
    ck = torch.load(path, map_location=device, weights_only=False)
    model, relay = build(preset, device)
    model.load_state_dict(ck["model"])
    relay.channel.load_state_dict(ck["channel"])
    model.eval()
    return relay, {k: ck[k] for k in ("passes", "wall", "log", "method")}
