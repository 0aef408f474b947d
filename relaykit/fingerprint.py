"""A cheap fingerprint of a module's tensors, to tell whether training changed the backbone since attach.

Each parameter and buffer in ``state_dict()`` is summarised by two integer checksums of its raw bits, read as 8-byte
words (their sum, and a row-position-weighted sum), computed on its own device with one host sync per device. Any
update a training step makes changes them; a change that leaves both equal is astronomically unlikely (values
swapped within one row of 64 words, 128 float32 values, would be missed: no training step does that). Tensors on
the meta device have no content, so a module holding one has no fingerprint (None) and is treated as changed.

Example::

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> ref = fingerprint(lin)
    >>> changed_tensors(lin, ref)
    []
    >>> with torch.no_grad():
    ...     _ = lin.bias.add_(1.0)
    >>> changed_tensors(lin, ref)
    ['bias']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Fingerprint = dict[str, tuple[int, int]]
_ROW = 64  # 8-byte words per row of the position-weighted checksum


def _words(t: Tensor) -> tuple[Tensor, Tensor]:
    """The raw bytes of ``t`` as int64 words (a view where alignment allows) and the < 8 trailing bytes."""
    flat = t.detach().reshape(-1)  # (N,)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    raw = flat.view(torch.uint8)  # (N * element size,) the same memory
    whole = raw.numel() // 8 * 8
    try:
        words = raw[:whole].view(torch.int64)  # (W,)
    except RuntimeError:  # storage offset not 8-byte aligned: one copy of this tensor
        words = raw[:whole].clone().view(torch.int64)
    return words, raw[whole:].to(torch.int64)


def _sums(t: Tensor) -> Tensor:
    """(2,) int64 checksums of the raw bits of ``t``: the sum of its 8-byte words, and a position-weighted sum (rows
    of ``_ROW`` words weighted by row number; the last, partial row word by word). Reductions over a view with a
    temporary of 1/_ROW of the tensor; wrapping on overflow, which is fine for a checksum."""
    words, tail = _words(t)
    rows = words.numel() // _ROW * _ROW
    row_sums = words[:rows].view(-1, _ROW).sum(1)  # (r,)
    rest = torch.cat([words[rows:], tail])  # (< _ROW + 8,) the partial last row and the trailing bytes
    total = row_sums.sum() + rest.sum()
    weighted = (row_sums * torch.arange(1, row_sums.numel() + 1, device=words.device)).sum()
    weighted = weighted + (rest * torch.arange(row_sums.numel() + 1, row_sums.numel() + 1 + rest.numel(),
                                               device=words.device)).sum()  # fmt: skip
    return torch.stack([total, weighted])


def tensors_of(module: nn.Module, *, skip_prefix: str | None = None) -> dict[str, Tensor]:
    """``module.state_dict()`` (parameters and persistent buffers) without the entries under ``skip_prefix``."""
    prefix = None if skip_prefix is None else skip_prefix.rstrip(".") + "."
    return {k: v for k, v in module.state_dict(keep_vars=True).items() if prefix is None or not k.startswith(prefix)}


def fingerprint(module: nn.Module, *, skip_prefix: str | None = None) -> Fingerprint | None:
    """Checksums of every tensor of ``module`` (except under ``skip_prefix``); None if any tensor is on meta."""
    tensors = tensors_of(module, skip_prefix=skip_prefix)
    if any(t.is_meta for t in tensors.values()):
        return None
    sums = {k: _sums(t) for k, t in tensors.items()}
    out: Fingerprint = {}
    for device in {s.device for s in sums.values()}:
        keys = [k for k, s in sums.items() if s.device == device]
        values = torch.stack([sums[k] for k in keys]).tolist()  # one host sync per device
        out.update({k: (int(v[0]), int(v[1])) for k, v in zip(keys, values)})
    return out


def changed_tensors(module: nn.Module, reference: Fingerprint | None, *, skip_prefix: str | None = None) -> list[str]:
    """Names of the tensors of ``module`` that differ from ``reference`` (all of them when there is none)."""
    now = fingerprint(module, skip_prefix=skip_prefix)
    names = list(tensors_of(module, skip_prefix=skip_prefix))
    if now is None or reference is None:
        return names
    return [k for k in names if reference.get(k) != now[k]]
