"""Shared validation helpers: the checks many modules make, written once with one wording.

Legend: b batch, n positions.

Each helper either returns the checked value or raises an error that names the argument, what was expected and
what came. Nothing is coerced silently: a bool is not an int here, a float is not a count.

Example::

    >>> positive_int(3, name="block_size")
    3
    >>> is_int(True)
    False
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import Tensor

from relaykit.state import RelayState


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a Python int and not a bool (``True`` is an int to Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, *, name: str) -> int:
    """``value`` when it is an int >= 1; ValueError naming ``name`` otherwise."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def non_negative_int(value: Any, *, name: str) -> int:
    """``value`` when it is an int >= 0; ValueError naming ``name`` otherwise."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def still_masked(z: Tensor, mask_token_id: int, maskable: Tensor) -> Tensor:
    """(b, n) bool: positions of ``z`` (b, n) that hold the mask token and are maskable (the ones left to fill)."""
    return (z == mask_token_id) & maskable


def check_state_type(state: Any) -> None:
    """TypeError unless ``state`` is a RelayState or None."""
    if state is not None and not isinstance(state, RelayState):
        raise TypeError(f"state must be a RelayState or None, got {type(state).__name__}")


def check_state_covers(state: RelayState, batch: int, length: int, *, what: str, exact: bool, hint: str) -> None:
    """Raise unless ``state`` holds ``batch`` rows and covers ``length`` positions from 0 (``what``: the batch or
    canvas it is for): exactly (``exact``: a decoding canvas) or at most (a training batch, whose state grows)."""
    check_state_type(state)
    covers = state.offset == 0 and (state.end == length if exact else state.end <= length)
    if state.batch_size != batch or not covers:
        raise ValueError(
            f"the relay state covers {state.batch_size} rows at positions {state.offset}..{state.end - 1}, but "
            f"{what} has {batch} rows of length {length}; {hint}"
        )


def check_token_ids(input_ids: Any, vocab: int | None, *, read_range: bool = True) -> None:
    """Raise unless ``input_ids`` is a non-empty (b, n) integer tensor of ids inside a vocabulary of ``vocab``.

    ``read_range=False`` skips the vocabulary check, the one part that reads the tensor (a host sync).
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, length) tensor of token ids; got {got}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise ValueError(f"input_ids has no rows (shape {tuple(input_ids.shape)}); pass at least one sequence")
    if read_range and input_ids.numel():
        lo, hi = (int(v) for v in input_ids.aminmax())
        if lo < 0 or (vocab is not None and hi >= vocab):
            raise ValueError(
                f"input_ids hold token ids {lo}..{hi} but the embedding has a vocabulary of {vocab} "
                f"(ids 0..{vocab - 1 if vocab is not None else '?'}); check the tokenizer against the model"
            )


def check_state_width(state: Any, width: int) -> None:
    """TypeError unless a RelayState or None; ValueError when its hidden width is not ``width`` (the channel's)."""
    check_state_type(state)
    if state is not None and state.hidden_size != width:
        raise ValueError(
            f"the relay state has hidden width {state.hidden_size} but this relay's channel reads width {width} "
            f"(the backbone's final hidden size); pass a state made by this model, or None"
        )
