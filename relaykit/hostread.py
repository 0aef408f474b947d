"""The decoding step's one host read: every value a step of :func:`relaykit.generate` decides on, read at once.

Legend: b batch, k flags a runner asks for.

A step must know on the host whether its focus still has masked positions (else the loop moves on). Everything
else the loop or a runner would branch on is computed on the device beforehand and read in the same transfer:
whether every row has stopped at an EOS (first step of a block after an EOS check), whether the last commit broke
a policy rule, a runner's own flags (Fast-dLLM v2's sub-block cache: does the sub-block still start masked?) and,
with ``drop_finished_rows``, which rows still have a blank (b,).
On an accelerator each separate read waits for the queue to drain; one read per step waits once.

Example::

    >>> import torch
    >>> read_step(torch.tensor(True), None, torch.tensor([False, False]), torch.tensor([True]), None)
    (True, False, [False, False], ((True,), ()))
"""

from __future__ import annotations

import torch
from torch import Tensor


def read_step(
    go: Tensor, stop: Tensor | None, pending: Tensor | None, *more: Tensor | None
) -> tuple[bool, bool, list[bool], tuple[tuple[bool, ...], ...]]:
    """Read ``go`` () whether the focus still has masks, ``stop`` (1,) whether every row has stopped at an EOS,
    ``pending`` (2,) the last commit's :func:`~relaykit.policies.policy_violations` and each of ``more`` (a runner's
    :meth:`~relaykit.blockrun.Runner.host_flags` (k,), the rows left (b,) ...) in one transfer. Returns (go,
    stopped, violations, one tuple per ``more``); the parts passed as None come back as False, [] and ()."""
    given = [t for t in (stop, pending, *more) if t is not None]
    values = (torch.cat([go.view(1)] + [t.reshape(-1) for t in given]) if given else go.view(1)).tolist()
    rest = [bool(v) for v in values[1:]]
    stopped = rest.pop(0) if stop is not None else False
    broken = [rest.pop(0), rest.pop(0)] if pending is not None else []
    out = []
    for t in more:
        n = 0 if t is None else t.numel()
        out.append(tuple(rest[:n]))
        rest = rest[n:]
    return bool(values[0]), stopped, broken, tuple(out)
