"""Token shift: line logits up with the tokens they predict, in one place.

Legend: b batch, n positions, m selected positions, V vocabulary.

An adapter's ``token_shift`` says that the hidden state at position i predicts token ``i + token_shift``: 0 for
LLaDA and MDLM, 1 for AR-initialised MDMs such as Fast-dLLM v2. So the prediction *for* token i sits at logits
position ``i - token_shift``, and the first ``token_shift`` tokens have no prediction at all (they must never be
masked: a prompt token, in practice).

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


def _check_shift(token_shift: int) -> int:
    if not isinstance(token_shift, int) or isinstance(token_shift, bool) or token_shift < 0:
        raise ValueError(f"token_shift must be an int >= 0, got {token_shift!r}")
    return token_shift


def align_logits(logits: Tensor, token_shift: int) -> Tensor:
    """Logits (b, n, V) re-indexed so position i holds the prediction for token i.

    The first ``token_shift`` positions have no prediction and are filled with zeros (a uniform distribution);
    callers must not treat them as candidates. With ``token_shift == 0`` the input is returned as is (no copy).
    """
    shift = _check_shift(token_shift)
    if shift == 0:
        return logits
    n = logits.shape[1]
    return F.pad(logits, (0, 0, shift, 0))[:, :n]  # (b, n, V): out[:, i] = logits[:, i - shift]


def gather_aligned(logits: Tensor, where: Tensor, token_shift: int) -> Tensor:
    """The predictions (m, V) for the tokens at the True positions of ``where`` (b, n), in row-major order.

    Indexes only the selected positions (no (b, n, V) copy), so it is the cheap way to build a loss.
    """
    shift = _check_shift(token_shift)
    rows, cols = where.nonzero(as_tuple=True)  # (m,), (m,)
    if shift and cols.numel() and int(cols.min()) < shift:
        raise ValueError(
            f"with token_shift={shift} the first {shift} position(s) have no prediction, but position "
            f"{int(cols.min())} was selected; never mask the first {shift} token(s) (keep a prompt token there)"
        )
    return logits[rows, cols - shift]  # (m, V)


def unpredictable(length: int, token_shift: int) -> slice:
    """The slice of positions that have no prediction under ``token_shift`` (the first ``token_shift``)."""
    return slice(0, min(_check_shift(token_shift), length))
