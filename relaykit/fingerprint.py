"""A cheap fingerprint of a module's tensors, to tell whether training changed the backbone since attach.

Each parameter and buffer in ``state_dict()`` is summarised by two integer checksums of its raw bits (a plain sum
and a position-weighted sum, computed on its own device in chunks, one host sync per device). Any update a training
step makes changes them; a change that leaves both equal is astronomically unlikely. Tensors on the meta device have
no content, so a module holding one has no fingerprint (None) and is treated as changed.

Example::

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> ref = fingerprint(lin)
    >>> changed_tensors(lin, ref)
    []
    >>> with torch.no_grad():
    ...     lin.bias.add_(1.0)
    >>> changed_tensors(lin, ref)
    ['bias']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Fingerprint = dict[str, tuple[int, int]]
_CHUNK = 1 << 24  # elements summed at once: bounds the int64 temporaries to 128 MiB
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _sums(t: Tensor) -> Tensor:
    """(2,) int64 checksums of the raw bits of ``t`` (wrapping on overflow, which is fine for a checksum)."""
    flat = t.detach().reshape(-1)  # (N,)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    bits = flat.view(_INT_OF_SIZE.get(flat.element_size(), torch.uint8))  # (N',) same bytes as integers
    total = torch.zeros(2, dtype=torch.int64, device=t.device)
    for start in range(0, bits.numel(), _CHUNK):
        chunk = bits[start : start + _CHUNK].to(torch.int64)  # (c,)
        weight = torch.arange(start, start + chunk.numel(), device=t.device) % 65521 + 1  # (c,)
        total += torch.stack([chunk.sum(), (chunk * weight).sum()])
    return total


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
