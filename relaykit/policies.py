"""Unmasking policies: which still-masked positions to commit after a forward pass. Used by training and decoding.

Legend: b batch, n positions, V vocabulary.

A policy gets the step's confidence (max probability, (b, n)), the candidate positions (still masked and
maskable, (b, n) bool) and returns the positions to commit, (b, n) bool, always a subset of the candidates.
Every policy commits at least one candidate in every row that still has one, so no loop can stall.

Example::

    >>> import torch
    >>> conf = torch.tensor([[0.95, 0.5, 0.7]]); cand = torch.tensor([[True, True, True]])
    >>> Threshold(0.9)(conf, cand).tolist()      # >= 0.9, at least the most confident one
    [[True, False, False]]
    >>> TopK(2)(conf, cand).tolist()
    [[True, False, True]]

The paper's Sudoku tau is the complement: tau = 0.15 there means ``Threshold(0.85)`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _positive_int(owner: str, name: str, value: object) -> None:
    """Refuse anything but an int >= 1 (no silent rounding of 2.5 to 2, no True for 1)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be an int >= 1, got {type(value).__name__} {value!r}")


def _check(confidence: Tensor, candidates: Tensor) -> None:
    if confidence.shape != candidates.shape or candidates.dtype != torch.bool:
        raise ValueError(
            f"policy expects confidence (b, n) and bool candidates of the same shape; got "
            f"{tuple(confidence.shape)} and {tuple(candidates.shape)} {candidates.dtype}"
        )


def _top_per_row(score: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """The k[b] highest-scoring candidates of each row, (b, n) bool. k (b,) may differ per row."""
    score = score.masked_fill(~candidates, float("-inf"))  # (b, n)
    order = score.argsort(dim=-1, descending=True, stable=True)  # (b, n)
    ranks = torch.arange(score.shape[1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)  # rank of each position in its row
    return (rank < k.unsqueeze(-1)) & candidates


def random_per_row(candidates: Tensor, k: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``k[b]`` candidates of each row (b, n) chosen uniformly at random, (b, n) bool (all of them if fewer).

    Shared by :class:`RandomK` and the random mask ratio of masked-LM training (``init="random"`` in rollouts).
    """
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)  # (b, n)
    return _top_per_row(noise, candidates, k.to(candidates.device))


class Policy:
    """Base class: ``policy(confidence (b, n), candidates (b, n) bool) -> commit (b, n) bool``."""

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def at_least_one(self, commit: Tensor, confidence: Tensor, candidates: Tensor) -> Tensor:
        """Add the most confident candidate to every row that would otherwise commit nothing."""
        empty = ~commit.any(-1) & candidates.any(-1)  # (b,)
        # no "any row empty?" branch: it would read a value on the host every step; the best candidate of each row
        # is cheap (an argmax; ties go to the first position, as in _top_per_row) and added only where empty
        score = confidence.masked_fill(~candidates, float("-inf"))  # (b, n)
        best = torch.zeros_like(candidates).scatter_(1, score.argmax(-1, keepdim=True), True) & candidates  # (b, n)
        return commit | (best & empty.unsqueeze(-1))


@dataclass(frozen=True)
class Threshold(Policy):
    """Commit every candidate with confidence >= ``threshold``; always at least the most confident one.

    ``max_per_step`` optionally caps the number committed per row per step (most confident first).
    """

    threshold: float = 0.9
    max_per_step: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"Threshold.threshold must be a number in [0, 1], got {type(self.threshold).__name__}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Threshold.threshold must be in [0, 1], got {self.threshold}")
        if self.max_per_step is not None:
            _positive_int("Threshold", "max_per_step", self.max_per_step)

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(confidence, candidates)
        commit = candidates & (confidence >= self.threshold)
        if self.max_per_step is not None:
            cap = torch.full(commit.shape[:1], self.max_per_step, device=commit.device, dtype=torch.long)
            commit = _top_per_row(confidence, commit, cap)
        return self.at_least_one(commit, confidence, candidates)


@dataclass(frozen=True)
class TopK(Policy):
    """Commit the ``k`` most confident candidates per row (LLaDA's low-confidence remasking)."""

    k: int = 1

    def __post_init__(self) -> None:
        _positive_int("TopK", "k", self.k)

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(confidence, candidates)
        k = torch.full(confidence.shape[:1], self.k, device=confidence.device, dtype=torch.long)
        return _top_per_row(confidence, candidates, k)


@dataclass(frozen=True)
class RandomK(Policy):
    """Commit ``k`` candidates per row uniformly at random (or a ``fraction`` of them, rounded up)."""

    k: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None and self.fraction is not None:
            raise ValueError("RandomK takes k or fraction, not both")
        if self.k is not None:
            _positive_int("RandomK", "k", self.k)
        if self.fraction is not None and (
            isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float))
        ):
            raise ValueError(f"RandomK.fraction must be a number in (0, 1], got {type(self.fraction).__name__}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"RandomK.fraction must be in (0, 1], got {self.fraction}")

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(confidence, candidates)
        if self.fraction is not None:
            k = torch.ceil(candidates.sum(-1) * self.fraction).long().clamp(min=1)  # (b,)
        else:
            k = torch.full(confidence.shape[:1], int(self.k or 1), device=confidence.device, dtype=torch.long)
        return random_per_row(candidates, k, generator)


class Oracle(Policy):
    """Commit candidates in a given order: ``order`` (b, n), lower value first, ``k`` per step.

    E.g. a solver's deduction order for Sudoku, or left to right (``order = arange(n)``).
    """

    def __init__(self, order: Tensor, k: int = 1) -> None:
        _positive_int("Oracle", "k", k)
        if not isinstance(order, Tensor):
            raise TypeError(f"Oracle.order must be a (b, n) tensor, got {type(order).__name__}")
        self.order = order
        self.k = k

    def __call__(self, confidence: Tensor, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check(confidence, candidates)
        if self.order.shape != candidates.shape:
            raise ValueError(f"Oracle.order has shape {tuple(self.order.shape)}, expected {tuple(candidates.shape)}")
        k = torch.full(confidence.shape[:1], self.k, device=confidence.device, dtype=torch.long)
        return _top_per_row(-self.order.to(confidence.dtype), candidates, k)

    def __repr__(self) -> str:
        return f"Oracle(order={tuple(self.order.shape)}, k={self.k})"


#: positions x vocabulary entries processed at once by confidence_and_prediction (bounds its float32 temporaries)
CONFIDENCE_CHUNK = 1 << 22


def _confidence_rows(logits: Tensor, mask_token_id: int | None) -> tuple[Tensor, Tensor]:
    logits = logits.float()
    if mask_token_id is not None and 0 <= mask_token_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_token_id] = float("-inf")
    probs = logits.softmax(-1)  # (m, V)
    return probs.max(-1)


def as_policy(policy: Policy | None) -> Policy:
    """The policy to use: ``Threshold(0.9)`` for None, else a Policy (or any callable with its signature)."""
    if policy is None:
        return Threshold(0.9)
    if not callable(policy):
        raise TypeError(
            f"policy must be a relaykit.policies.Policy (Threshold, TopK, RandomK, Oracle) or a callable "
            f"(confidence (b, n), candidates (b, n), generator) -> commit (b, n); got {type(policy).__name__}"
        )
    return policy


def confidence_and_prediction(logits: Tensor, *, mask_token_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Max probability and argmax token per position, (b, n) each; the mask token is never predicted.

    Works through the positions in chunks of about ``CONFIDENCE_CHUNK`` logits, so the float32 copies it makes
    stay small next to the (b, n, V) logits (the peak memory of a training window); every position's result is
    the same as computing all at once.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (b*n, V)
    step = max(1, CONFIDENCE_CHUNK // max(1, flat.shape[-1]))
    parts = [_confidence_rows(flat[i : i + step], mask_token_id) for i in range(0, flat.shape[0], step)]
    if not parts:
        parts = [_confidence_rows(flat, mask_token_id)]
    confidence = torch.cat([c for c, _ in parts]).view(logits.shape[:-1])  # (b, n)
    prediction = torch.cat([p for _, p in parts]).view(logits.shape[:-1])  # (b, n)
    return confidence, prediction


def commit_step(
    policy: Policy,
    logits: Tensor,
    z: Tensor,
    *,
    mask_token_id: int,
    maskable: Tensor | None = None,
    generator: torch.Generator | None = None,
    scores: tuple[Tensor, Tensor] | None = None,
    check: bool = True,
) -> tuple[Tensor, Tensor]:
    """One unmasking decision: returns (commit (b, n) bool, predicted tokens (b, n)).

    Candidates are positions of ``z`` (b, n) equal to the mask token (and ``maskable`` where given).
    ``logits`` (b, n, V) must already be aligned with ``z`` (token shift applied by the caller). ``scores``:
    (confidence (b, n), proposed tokens (b, n)) chosen by the caller (e.g. sampled, see
    ``relaykit.generation.choose_tokens``) instead of max probability and argmax. ``check=False`` leaves the
    policy's two rules (only candidates; at least one per row that has some) to the caller, who reads
    :func:`policy_violations` together with its own host reads (one sync per step instead of two more).
    """
    if logits.shape[:2] != z.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not line up with tokens {tuple(z.shape)}")
    candidates = z == mask_token_id
    if maskable is not None:
        candidates = candidates & maskable
    if scores is None:
        confidence, prediction = confidence_and_prediction(logits, mask_token_id=mask_token_id)
    else:
        confidence, prediction = scores
    commit = policy(confidence, candidates, generator)
    if check:
        raise_policy_violation(policy, *policy_violations(commit, candidates).tolist())  # one host read
    return commit, prediction


def policy_violations(commit: Tensor, candidates: Tensor) -> Tensor:
    """(2,) bool on the device, read nothing: [a position that was not a candidate was committed, a row that has
    candidates committed none]. Pass the two values, read on the host, to :func:`raise_policy_violation`."""
    outside = (commit & ~candidates).any()
    stalled = (candidates.any(-1) & ~commit.any(-1)).any()
    return torch.stack([outside, stalled])


def raise_policy_violation(policy: object, outside: bool, stalled: bool) -> None:
    """RuntimeError naming the rule ``policy`` broke (see :func:`policy_violations`); nothing when it broke none."""
    if outside:
        raise RuntimeError(f"{policy!r} committed a position that was not a candidate")
    if stalled:
        raise RuntimeError(f"{policy!r} committed nothing in a row that still has masked positions; it would stall")
