"""CUDA graphs in ``python -m relaykit.bench decode --cuda-graphs``: the fixed-shape relay forward and the
uncached bidirectional decode (one shape every step), compiled against eager, with identical tokens.

Example::

    python -m relaykit.bench decode --device cuda --skip overhead cache upstream --cuda-graphs
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import relaykit
from relaykit.bench.timing import hook_overhead, timed
from relaykit.policies import TopK


def _copied(value: Any) -> Any:
    """``value`` with every tensor cloned (dataclasses, lists, tuples, dicts walked): a CUDA graph's outputs live in
    its static buffers and are overwritten by its next replay, and decoding keeps them across steps."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _copied(getattr(value, f.name)) for f in dataclasses.fields(value)
                                             if f.init})  # fmt: skip
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


def compiled_call(
    fn: Callable[..., Any], device: torch.device, backend: str = "inductor"
) -> tuple[Callable[..., Any], str]:
    """``fn`` through ``torch.compile``: CUDA graphs on CUDA (``mode="reduce-overhead"`` with inductor, or backend
    ``"cudagraphs"``); elsewhere backend ``aot_eager`` (the same dynamo capture, no graphs: CUDA graphs need CUDA).
    Returns (call, description); the call marks a new graph step and copies the outputs out of the graph's buffers."""
    if device.type == "cuda" and backend == "cudagraphs":
        compiled = torch.compile(fn, backend="cudagraphs", dynamic=False)
        how = 'torch.compile(backend="cudagraphs"): CUDA graphs of the uncompiled ops'
    elif device.type == "cuda":
        compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)
        how = 'torch.compile(mode="reduce-overhead"): inductor kernels in CUDA graphs'
    else:
        compiled = torch.compile(fn, backend="aot_eager", dynamic=False)
        how = f'torch.compile(backend="aot_eager") on {device.type}: CUDA graphs need CUDA, so no graphs here'

    def call(*args: Any, **kwargs: Any) -> Any:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return _copied(compiled(*args, **kwargs))

    return call, how


def graphs_part(relay: relaykit.RelayModel, args: argparse.Namespace, g: torch.Generator) -> bool:
    """The fixed-shape relay forward and the uncached decode (every step feeds the whole canvas: one shape), eager
    vs compiled (CUDA graphs on CUDA); identical tokens checked. Any failure to compile is reported, not raised."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # one graph per block
    relay_call, how = compiled_call(relay.forward, args.device, args.graphs_backend)
    bare_call, _ = compiled_call(relay.backbone.forward, args.device, args.graphs_backend)
    print(f"compiled decoding: {how}")
    ids = torch.randint(0, args.vocab - 1, (1, args.forward_length), generator=g).to(args.device)
    ids[:, args.forward_length // 2 :] = relay.mask_token_id
    try:
        t0 = time.perf_counter()
        relay_s, bare_s, pair, _ = hook_overhead(relay, ids, args.forwards, relay_call=relay_call, bare_call=bare_call)
        eager_s, _, _, _ = hook_overhead(relay, ids, args.forwards)
        with torch.no_grad():
            state = relay(ids).state
            same = torch.equal(
                relay(ids, state=state).logits.argmax(-1), relay_call(ids, state=state).logits.argmax(-1)
            )
        print(
            f"  relay forward (length {args.forward_length}), compiled: {relay_s * 1e3:.3f} ms vs eager "
            f"{eager_s * 1e3:.3f} ms = {eager_s / relay_s:.2f}x faster; compiled relay / compiled bare "
            f"{relay_s / bare_s:.4f} (paired median {pair:.4f}); same argmax tokens as eager: {same} "
            f"(compile + warm-up + timing {time.perf_counter() - t0:.1f} s)"
        )
    except Exception as exc:  # noqa: BLE001 - the bench reports what cannot be graphed instead of stopping
        print(f"  relay forward: cannot be compiled here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return True
    prompt = torch.randint(0, args.vocab - 1, (1, args.prompt), generator=g).to(args.device)
    kw = dict(max_new_tokens=args.new_tokens, block_size=args.block_size, policy=TopK(args.per_step),
              attention="bidirectional", use_cache=False)  # fmt: skip
    results: dict[str, relaykit.GenerateResult] = {}

    def run(which: str) -> None:
        if which == "compiled":
            relay.forward = relay_call  # type: ignore[method-assign]  # what generate's runner calls
        try:
            results[which] = relaykit.generate(relay, prompt, **kw)
        finally:
            relay.__dict__.pop("forward", None)

    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            run("compiled")  # compiles: one graph for the first step (no state yet), one for the others
            run("compiled")
        warm = time.perf_counter() - t0
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        run("eager")
        for i in range(args.repeats):
            for which in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
                times[which].append(timed(args.device, run, which))
    except Exception as exc:  # noqa: BLE001
        print(f"  uncached decode: cannot be compiled here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return True
    eager_s, comp_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    same = torch.equal(results["eager"].sequences, results["compiled"].sequences)
    n = args.new_tokens
    print(
        f"  uncached decode of {n} tokens (bidirectional: the whole canvas every step, one shape; blocks of "
        f"{args.block_size}, TopK({args.per_step}), median of "
        f"{args.repeats}): eager {eager_s:.3f} s ({n / eager_s:.1f} tok/s), compiled {comp_s:.3f} s "
        f"({n / comp_s:.1f} tok/s) = {eager_s / comp_s:.2f}x; identical tokens: {same} (compile + 2 warm-up decodes "
        f"{warm:.1f} s)"
    )
    print(
        "  not graphed: the cached loops (the KV cache grows every block: a new shape per block, a graph each) and "
        "the block-causal uncached loop (it feeds the prompt and the blocks so far: a new length per block); every "
        "loop reads on the host whether a block is done between steps"
    )
    return same
