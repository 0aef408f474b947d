"""Evaluation: decode every puzzle with relaykit's loop at each confidence threshold, with and without h.

Decoding is ``relaykit.generate`` infilling the 81-cell canvas. After every denoising step the partial board
(givens + committed cells) of each puzzle still being decoded is checked for legality (no digit repeated in a
row, column or box); ``legal_fraction`` is the share of those (puzzle, step) boards that are fully legal. NFE
counts forward passes per puzzle.

Legend: b batch, n = 81 cells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

import relaykit
from relaykit.policies import Threshold
from sudoku.data import PuzzleSet, legal
from sudoku.model import MASK


@torch.no_grad()
def decode(
    relay: relaykit.RelayModel, puzzles: Tensor, threshold: float, *, zero_h: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fill the blanks of ``puzzles`` (b, n) (0 = blank = mask) with ``relaykit.generate``.

    Returns (boards (b, n), nfe (b,), legal steps (b,), steps checked (b,)). ``zero_h`` runs the same model with
    h = 0 at every step (:func:`zeroed_h`): the ablation that shows whether the relayed state carries information.
    """
    previous = [puzzles]
    legal_steps = torch.zeros(puzzles.shape[0], dtype=torch.long, device=puzzles.device)
    checked = torch.zeros_like(legal_steps)

    def check(step: int, tokens: Tensor) -> None:  # after every step: was each board still being decoded legal?
        active = (previous[0] == MASK).any(-1)  # (b,)
        checked.add_(active.long())
        legal_steps.add_((active & legal(tokens)).long())
        previous[0] = tokens

    with zeroed_h(relay) if zero_h else contextlib.nullcontext():
        res = relaykit.generate(
            relay, puzzles, max_new_tokens=0, policy=Threshold(threshold), callback=check, drop_finished_rows=True
        )  # solved boards leave the batch: the same tokens and NFE for half the work
    return res.sequences, res.nfe.cpu(), legal_steps.cpu(), checked.cpu()


@contextlib.contextmanager
def zeroed_h(relay: relaykit.RelayModel) -> Iterator[None]:
    """The model with h = 0 at every step: relay disabled, except that with ``empty="zero"`` the relay term of
    h = 0, R(0) (a learned bias), is still added to every token embedding, so only the state's information is
    removed."""
    with relay.disabled():
        if relay.empty != "zero":
            yield
            return
        hidden = relay.channel.config.hidden_size
        r0 = relay.channel(torch.zeros(1, 1, hidden, device=relay.channel.proj.weight.device))  # (1, 1, e)
        emb = relay.adapter.embedding(relay.backbone)
        handle = emb.register_forward_hook(lambda module, args, output: output + r0.to(output.dtype))
        try:
            yield
        finally:
            handle.remove()


def cache_key(data: PuzzleSet, thresholds: tuple[float, ...], *, source: str) -> str:
    """The folder name of an evaluation cache: source name, size, a digest of the puzzles and the thresholds.

    Keyed by content, so another file with the same name never reuses the old results.
    """
    taus = "_".join(f"{t:g}" for t in thresholds)
    return f"{source}-{len(data)}-{data.digest()[:12]}-tau{taus}"


def evaluate(
    relay: relaykit.RelayModel,
    data: PuzzleSet,
    thresholds: tuple[float, ...],
    *,
    method: str,
    batch: int,
    device: torch.device,
    zero_h: bool = False,
    progress: bool = True,
    subsets: dict[str, np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Rows of results.json for one model, one per threshold x subset (default ``all``, ``deducible``, ``search``),
    and the per-puzzle outcomes behind them: ``solved`` (T, N) bool and ``nfe`` (T, N) int, one row per threshold
    (what the bootstrap intervals resample). ``cells_per_forward`` is the blanks committed per forward pass."""
    from tqdm.auto import tqdm

    complete = np.flatnonzero((data.puzzles != 0).all(-1))
    if complete.size:
        raise ValueError(
            f"{data.source}: puzzle(s) {complete[:5].tolist()} have no blank cell: nothing to decode (accuracy and "
            f"NFE would be meaningless); drop them from the evaluation set"
        )
    rows = []
    puzzles = torch.from_numpy(data.puzzles)
    solutions = torch.from_numpy(data.solutions)
    masks = data.subset_masks() if subsets is None else subsets
    total = len(thresholds) * len(data)
    bar = tqdm(total=total, desc=f"eval {method}", unit="puzzle", disable=not progress, leave=False)
    per_solved, per_nfe = [], []
    for tau in thresholds:
        boards, nfes, legals, checked = [], [], [], []
        for start in range(0, len(data), batch):
            out = decode(relay, puzzles[start : start + batch].to(device), tau, zero_h=zero_h)
            boards.append(out[0].cpu())
            nfes.append(out[1])
            legals.append(out[2])
            checked.append(out[3])
            bar.update(len(out[0]))
        board = torch.cat(boards)
        nfe, ok, seen = torch.cat(nfes), torch.cat(legals), torch.cat(checked)
        blank = puzzles == 0
        correct = (board == solutions) & blank  # (N, n)
        solved = (board == solutions).all(-1)  # (N,)
        per_solved.append(solved.numpy())
        per_nfe.append(nfe.numpy())
        for subset, mask_np in masks.items():
            mask = torch.from_numpy(np.asarray(mask_np))
            count = int(mask.sum())
            if count == 0:
                continue
            rows.append(
                {
                    "method": method,
                    "threshold": float(tau),
                    "subset": subset,
                    "puzzles": count,
                    "accuracy": float(solved[mask].float().mean()),
                    "cell_accuracy": float(correct[mask].sum() / blank[mask].sum()),
                    "nfe": float(nfe[mask].float().mean()),
                    "legal_fraction": float(ok[mask].sum() / seen[mask].sum()),
                    "cells_per_forward": float(blank[mask].sum() / nfe[mask].sum()) if int(nfe[mask].sum()) else 0.0,
                }
            )
    bar.close()
    return rows, {"solved": np.stack(per_solved), "nfe": np.stack(per_nfe)}
