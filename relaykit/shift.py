"""Token shift: line logits up with the tokens they predict, decided in one place.

Legend: b batch, n positions, m selected positions, V vocabulary.

An adapter's ``token_shift`` says that the hidden state at position i predicts token ``i + token_shift``: 0 for
LLaDA and MDLM, 1 for AR-initialised MDMs such as Fast-dLLM v2 (no supported family uses more, and the decoding
loop keeps one position of logits before a block, so 0 and 1 are the only values accepted). So the prediction
*for* token i sits at logits position ``i - token_shift``, and the first ``token_shift`` tokens have no prediction
at all: they must never be masked (a prompt token, in practice). Training, decoding and the loss all check that
rule through :func:`check_first_unmasked` (contract 10).

Example::

    >>> import torch
    >>> logits = torch.arange(4.0).view(1, 4, 1)             # (b, n, V): position j holds value j
    >>> align_logits(logits, 1)[0, :, 0].tolist()            # token i is predicted at position i - 1
    [0.0, 0.0, 1.0, 2.0]
    >>> gather_aligned(logits, torch.tensor([[False, False, True, True]]), 1)[:, 0].tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from relaykit.checks import is_int

TOKEN_SHIFTS = (0, 1)


def check_token_shift(token_shift: object) -> int:
    """``token_shift`` when it is 0 or 1 (an int, not a bool); ValueError otherwise."""
    if not is_int(token_shift) or token_shift not in TOKEN_SHIFTS:
        raise ValueError(
            f"token_shift must be 0 or 1 (the hidden state at i predicts token i + token_shift), got {token_shift!r}"
        )
    return token_shift


def check_first_unmasked(masked: Tensor, token_shift: int, *, what: str) -> None:
    """Raise unless the first ``token_shift`` positions of ``masked`` (b, n) bool are all False.

    ``what`` names the tensor in the message ("maskable", "the masked positions of the canvas", ...).
    """
    shift = check_token_shift(token_shift)
    if shift and bool(masked[:, :shift].any()):
        first = int(masked[:, :shift].nonzero()[:, 1].min())
        raise ValueError(
            f"position {first} is masked but the backbone has a token shift of {shift}: the first {shift} "
            f"position(s) have no prediction, so {what} must leave them unmasked; keep a prompt / BOS token there"
        )


def align_logits(logits: Tensor, token_shift: int) -> Tensor:
    """Logits (b, n, V) re-indexed so position i holds the prediction for token i.

    The first ``token_shift`` positions have no prediction and are filled with zeros (a uniform distribution);
    callers must not treat them as candidates. With ``token_shift == 0`` the input is returned as is (no copy).
    """
    shift = check_token_shift(token_shift)
    if shift == 0:
        return logits
    n = logits.shape[1]
    return F.pad(logits, (0, 0, shift, 0))[:, :n]  # (b, n, V): out[:, i] = logits[:, i - shift]


def gather_aligned(logits: Tensor, where: Tensor, token_shift: int) -> Tensor:
    """The predictions (m, V) for the tokens at the True positions of ``where`` (b, n), in row-major order.

    Indexes only the selected positions (no (b, n, V) copy), so it is the cheap way to build a loss.
    """
    check_first_unmasked(where, token_shift, what="the positions selected for the loss")
    rows, cols = where.nonzero(as_tuple=True)  # (m,), (m,)
    return logits[rows, cols - token_shift]  # (m, V)
