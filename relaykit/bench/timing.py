"""Timing helpers of the benches: a clock that waits for the device's queue, the interleaved relay-vs-bare
forward timing, and a profiler print-out.

Example::

    >>> import torch
    >>> from relaykit.bench.timing import timed
    >>> timed(torch.device("cpu"), sum, [1, 2]) >= 0
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import relaykit

#: the clock timed() reads: time.perf_counter (wall) or time.process_time (--clock cpu)
CLOCK: Callable[[], float] = time.perf_counter


def profile(what: str, fn: Callable[[], Any], device: torch.device, rows: int = 12) -> None:
    """Run ``fn()`` once under torch.profiler and print its top operators by self time (device time on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        sync(device)
        with torch_profile(activities=activities) as prof:
            fn()
            sync(device)
    except Exception as exc:  # noqa: BLE001 - a profiler that cannot run (no CUPTI, ...) must not stop the bench
        print(f"where the time goes: {what}: the profiler could not run ({type(exc).__name__}: {exc})")
        return
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"where the time goes: {what} (torch.profiler, top {rows} by {key})")
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=48))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> float:
    """Seconds ``fn(*args)`` takes, with the device's queue drained before and after."""
    sync(device)
    clock = CLOCK  # read at call time: ``--clock cpu`` rebinds it
    t0 = clock()
    fn(*args)
    sync(device)
    return clock() - t0


def hook_overhead(
    relay: relaykit.RelayModel,
    ids: torch.Tensor,
    forwards: int,
    *,
    relay_call: Callable[..., Any] | None = None,
    bare_call: Callable[..., Any] | None = None,
) -> tuple[float, float, float, float]:
    """Relay vs bare forward, interleaved: (median relay s, median bare s, median paired ratio, ratio of minima).

    ``relay_call`` / ``bare_call`` replace ``relay`` / ``relay.backbone`` (e.g. their compiled versions)."""
    relay_call = relay if relay_call is None else relay_call
    bare_call = relay.backbone if bare_call is None else bare_call
    with torch.no_grad():
        state = relay(ids).state  # h filled at the masked positions: the channel really runs
        for _ in range(3):  # warm-up (and, compiled, the recording of the graphs)
            relay_call(ids, state=state)
            bare_call(ids)
        relay_t, bare_t = [], []
        for i in range(forwards):
            order = (True, False) if i % 2 == 0 else (False, True)  # alternate which goes first
            for with_relay in order:
                if with_relay:
                    relay_t.append(timed(ids.device, lambda: relay_call(ids, state=state)))
                else:
                    bare_t.append(timed(ids.device, bare_call, ids))
    ratios = [r / b for r, b in zip(relay_t, bare_t)]
    return statistics.median(relay_t), statistics.median(bare_t), statistics.median(ratios), min(relay_t) / min(bare_t)
