"""Measure the peak memory of a piece of PyTorch work, on CUDA or on CPU, and the bytes saved for backward.

* CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's own count of live tensor bytes).
* CPU: PyTorch keeps no allocator statistics there, so :class:`LiveBytes` counts them itself: a
  ``TorchDispatchMode`` sees every tensor an operator returns (forward and backward), adds the bytes of each new
  storage, and subtracts them when the storage is freed (a weak reference to the storage fires). Storages alive
  before the measurement (parameters, inputs) are counted once as the static part. This counts tensor storage
  only: no allocator slack, no Python objects, no framework workspaces, as CUDA's ``max_memory_allocated`` does.
* Saved for backward: a ``saved_tensors_hooks`` pair sums the distinct storages autograd keeps (the activations).

Example::

    >>> import torch
    >>> with LiveBytes() as m:
    ...     a = torch.zeros(1024)                  # 4 KiB
    ...     b = torch.zeros(1024); del b           # another 4 KiB, freed
    ...     c = torch.zeros(512)                   # 2 KiB
    >>> m.peak, m.live
    (8192, 6144)
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _key(storage: torch.UntypedStorage) -> tuple[int, str]:
    return storage.data_ptr(), str(storage.device)


class LiveBytes(TorchDispatchMode):
    """Count live tensor-storage bytes created inside the block: ``.live`` now, ``.peak`` the maximum."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[tuple[int, str], int] = {}
        self._refs: dict[tuple[int, str], weakref.ref[Any]] = {}
        self._excluded = {_key(t.untyped_storage()) for t in exclude}

    def _freed(self, key: tuple[int, str]) -> None:
        self.live -= self._sizes.pop(key, 0)
        self._refs.pop(key, None)

    def _track(self, t: Tensor) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = _key(storage)
        if key in self._excluded or storage.nbytes() == 0:
            return
        size = storage.nbytes()
        old = self._sizes.get(key)
        if old is None:
            self._refs[key] = weakref.ref(storage, lambda _, k=key: self._freed(k))
        self._sizes[key] = size
        self.live += size - (old or 0)
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._track(leaf)
        return out


class SavedBytes:
    """Sum the distinct storages autograd saves for backward inside the block (the activation memory)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[tuple[int, str]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = _key(storage)
        if key not in self._seen and not isinstance(t, torch.nn.Parameter):
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass
class Peak:
    """Peak bytes of one measured call: static (alive before: parameters, inputs) + the most allocated during."""

    static: int
    dynamic: int
    saved: int
    method: str

    @property
    def total(self) -> int:
        return self.static + self.dynamic


def _static_bytes(tensors: Iterable[Tensor]) -> int:
    seen: dict[tuple[int, str], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[_key(storage)] = storage.nbytes()
    return sum(seen.values())


def measure(work: Callable[[], None], *, static: Iterable[Tensor], device: torch.device) -> Peak:
    """Run ``work()`` once and return its peak memory on ``device`` (CUDA allocator stats, else :class:`LiveBytes`)."""
    static = list(static)
    gc.collect()
    saved = SavedBytes()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with saved:
            work()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return Peak(before, peak - before, saved.bytes, "torch.cuda.max_memory_allocated")
    counter = LiveBytes(exclude=static)
    with counter, saved:
        work()
    gc.collect()
    return Peak(_static_bytes(static), counter.peak, saved.bytes, "live tensor storage (TorchDispatchMode)")
