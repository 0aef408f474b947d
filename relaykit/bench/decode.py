"""``python -m relaykit.bench decode``: relay hook overhead, cached / uncached decoding, and relaykit.generate
against the upstream loop it replaces, in one run.

The first two figures come from the same backbone (a plain-PyTorch block-diffusion transformer, default 512 wide
and 8 layers, random weights, a random non-zero relay channel) measured in one process:

* hook overhead = relay forward (state in, new state out) / the bare backbone's forward on the same tokens,
  interleaved, as the median of the paired ratios; goal <= 1.01. The channel is about one d x d matmul per
  token, so its arithmetic alone is printed next to it (the floor);
* cache speed-up = uncached decode time / cached decode time for ``--new-tokens`` tokens in blocks of
  ``--block-size`` with the exact block-level prefix cache (block-causal attention), after checking both decodes
  give identical tokens; goal >= 6. The ratio of the two decodes' matmul FLOPs is printed next to it: the
  ceiling a cache can reach at that setting;
* upstream loop = Fast-dLLM v1's prefix-cache loop (``relaykit/bench/upstream.py``) on the LLaDA twin, bare,
  against ``relaykit.generate(use_cache="prefix", policy=Threshold(t))`` with a relay attached (zero-initialised:
  the tokens must be identical), same threshold; throughput ratio relaykit / upstream, goal >= 1.

The machine may be shared: timings are interleaved and repeated, and medians are reported (of the times and of
the paired ratios). ``--device cuda`` puts the models and inputs on the GPU and synchronises around every timed
region. ``--cuda-graphs`` also times the fixed-shape relay forward and the bidirectional uncached decode (the
whole canvas every step: one shape) through ``torch.compile(mode="reduce-overhead")`` against eager, with
identical tokens (on CPU the same path runs with backend ``aot_eager``, no graphs, and says so). ``--profile``
prints where the time goes (torch.profiler) in a cached decode and in both loops of the upstream comparison.

Example::

    python -m relaykit.bench decode                       # 512 x 8 layers, 256 new tokens in blocks of 32
    python -m relaykit.bench decode --width 128 --layers 2 --new-tokens 64 --repeats 3
    python -m relaykit.bench decode --device cuda --cuda-graphs --profile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import relaykit
from relaykit.bench import positive_int, timing
from relaykit.bench.backbone import BenchTransformer
from relaykit.bench.graphs import graphs_part
from relaykit.bench.timing import hook_overhead, profile, timed
from relaykit.bench.upstream import prefix_cache_loop
from relaykit.policies import Threshold, TopK


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m relaykit.bench decode", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=positive_int, default=512, help="backbone width (default 512)")
    p.add_argument("--layers", type=positive_int, default=8, help="backbone layers (default 8)")
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--vocab", type=positive_int, default=1024)
    p.add_argument("--prompt", type=positive_int, default=64, help="prompt length")
    p.add_argument("--new-tokens", type=positive_int, default=256, help="tokens to decode (default 256)")
    p.add_argument("--block-size", type=positive_int, default=32, help="block size (default 32)")
    p.add_argument("--per-step", type=positive_int, default=4, help="tokens committed per step (TopK policy)")
    p.add_argument("--forward-length", type=positive_int, default=512, help="sequence length of the overhead forwards")
    p.add_argument("--forwards", type=positive_int, default=30, help="timed forwards of each kind for the overhead")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed decodes of each kind (interleaved)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upstream-width", type=int, default=256, help="LLaDA twin width for the upstream comparison")
    p.add_argument("--upstream-layers", type=int, default=4, help="LLaDA twin layers (default 4)")
    p.add_argument("--upstream-vocab", type=int, default=2048, help="LLaDA twin vocabulary (default 2048)")
    p.add_argument("--upstream-new-tokens", type=int, default=128, help="tokens the upstream comparison decodes")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of both loops (default 0.9)")
    p.add_argument("--skip", nargs="*", default=[], choices=["overhead", "cache", "upstream"], help="parts to skip")
    p.add_argument("--device", default="cpu", help="torch device of the models and inputs (cpu, cuda, cuda:1, ...)")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time the fixed-shape relay forward and the uncached decode through torch.compile("
        "mode='reduce-overhead') (CUDA graphs); on CPU the same code path runs with backend aot_eager, no graphs",
    )
    p.add_argument(
        "--graphs-backend",
        choices=["inductor", "cudagraphs"],
        default="inductor",
        help="--cuda-graphs on CUDA: inductor with mode='reduce-overhead' (default; compiles for minutes), or "
        "backend 'cudagraphs' (CUDA graphs of the uncompiled ops: seconds to capture)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time (time.process_time), which a shared "
        "machine's other processes barely disturb (CPU, 1 thread only)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timings, profile one cached decode and one relaykit.generate of the upstream comparison "
        "(torch.profiler) and print where the time goes: the top operators by self time",
    )
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available in this torch build / on this machine")
    if args.clock == "cpu" and (args.device.type != "cpu" or args.threads != 1):
        p.error("--clock cpu measures one CPU thread's work: use it with --device cpu --threads 1")
    timing.CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    return args


def _flop_counter(model: torch.nn.Module, width: int, layers: int, vocab: int) -> tuple[list[float], object]:
    """Count the matmul FLOPs of every BenchTransformer call (linear layers, attention, LM head); returns the list
    the counts land in and the hook handle."""
    counts: list[float] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        q = args[0].shape[1] if args else kwargs["input_ids"].shape[1]
        past = kwargs.get("past_key_values")
        kv = q + (past[0][0].shape[-2] if past else 0)
        per_layer = q * 12 * width * width + 2 * q * kv * width  # qkv, out, 4x MLP; scores and values
        counts.append(2.0 * (layers * per_layer + q * width * vocab))

    return counts, model.register_forward_pre_hook(hook, with_kwargs=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    total = args.prompt + args.new_tokens
    model = BenchTransformer(args.vocab, args.width, args.layers, args.heads, max_len=max(total, args.forward_length))
    model.eval()
    relay = relaykit.attach(model).to(args.device)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, device=w.device) * 0.02)  # a "trained" channel: R(h) != 0
    where = f"{args.threads} CPU thread(s), {'process CPU time' if args.clock == 'cpu' else 'wall'} clock"
    if args.device.type == "cuda":
        where = f"{torch.cuda.get_device_name(args.device)} ({args.device}), timings synchronised"
    print(
        f"backbone: {type(model).__name__} width={args.width} layers={args.layers} heads={args.heads} "
        f"vocab={args.vocab}, float32, {where}"
    )
    g = torch.Generator().manual_seed(args.seed)  # inputs drawn on the CPU, then moved: the same on every device
    ok = True
    seconds: dict[str, float] = {}
    for part, fn in (
        ("overhead", lambda: _overhead(relay, args, g)),
        ("cache", lambda: _cache(relay, args, g)),
        ("upstream", lambda: _upstream(args, g)),
        ("cuda-graphs", lambda: graphs_part(relay, args, g)),
    ):
        if part in args.skip or (part == "cuda-graphs" and not args.cuda_graphs):
            continue
        t0 = time.perf_counter()
        ok &= fn() is not False
        seconds[part] = time.perf_counter() - t0
    print("wall time of each part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return 0 if ok else 1


def _overhead(relay: relaykit.RelayModel, args: argparse.Namespace, g: torch.Generator) -> None:
    ids = torch.randint(0, args.vocab - 1, (1, args.forward_length), generator=g).to(args.device)
    ids[:, args.forward_length // 2 :] = relay.mask_token_id  # half the sequence still masked
    relay_s, bare_s, pair, fastest = hook_overhead(relay, ids, args.forwards)
    n, d, layers, v = args.forward_length, args.width, args.layers, args.vocab
    backbone = layers * (n * 12 * d * d + 2 * n * n * d) + n * d * v  # matmul MACs of one forward
    floor = 1 + n * d * d / backbone  # the channel's one d x d matmul per token
    print(
        f"hook overhead (length {args.forward_length}, {args.forwards} forwards each): relay {relay_s * 1e3:.2f} ms / "
        f"bare {bare_s * 1e3:.2f} ms = {relay_s / bare_s:.4f}; median of paired ratios {pair:.4f}; ratio of "
        f"fastest {fastest:.4f} (goal <= 1.01; the channel's matmul alone is {floor:.4f})"
    )


def _cache(relay: relaykit.RelayModel, args: argparse.Namespace, g: torch.Generator) -> bool:
    prompt = torch.randint(0, args.vocab - 1, (1, args.prompt), generator=g).to(args.device)
    kw = dict(
        max_new_tokens=args.new_tokens,
        block_size=args.block_size,
        policy=TopK(args.per_step),
        attention="block_causal",
    )
    results: dict[bool, relaykit.GenerateResult] = {}
    flops: dict[bool, float] = {}

    def run(cached: bool) -> None:
        results[cached] = relaykit.generate(relay, prompt, use_cache=cached, **kw)

    counts, handle = _flop_counter(relay.backbone, args.width, args.layers, args.vocab)
    for cached in (True, False):  # warm-up, counting the matmul FLOPs of each decode
        counts.clear()
        run(cached)
        flops[cached] = sum(counts)
    handle.remove()  # type: ignore[attr-defined]
    u_all, c_all = [], []
    for i in range(args.repeats):  # interleaved, alternating which goes first: both see the same load
        for cached in (True, False) if i % 2 else (False, True):
            (c_all if cached else u_all).append(timed(args.device, run, cached))
    if args.profile:
        profile(f"one cached decode of {args.new_tokens} tokens", lambda: run(True), args.device)
    uncached_s, cached_s = statistics.median(u_all), statistics.median(c_all)
    pair = statistics.median(u / c for u, c in zip(u_all, c_all))
    same = torch.equal(results[True].sequences, results[False].sequences)
    tokens = args.new_tokens
    print(
        f"decode {tokens} new tokens (prompt {args.prompt}, blocks of {args.block_size}, TopK({args.per_step}), "
        f"block-causal, median of {args.repeats}):"
    )
    print(
        f"  uncached {uncached_s:.3f} s ({tokens / uncached_s:.1f} tok/s, NFE {results[False].nfe.item()}), "
        f"runs {[round(t, 3) for t in u_all]}"
    )
    print(
        f"  cached   {cached_s:.3f} s ({tokens / cached_s:.1f} tok/s, NFE {results[True].nfe.item()}), "
        f"runs {[round(t, 3) for t in c_all]}"
    )
    print(f"  identical outputs: {same}")
    print(
        f"cached / uncached throughput ratio: {uncached_s / cached_s:.2f}x (median of paired ratios {pair:.2f}x; "
        f"goal >= 6x; matmul FLOPs uncached / cached {flops[False] / flops[True]:.2f}x, the ceiling at this setting)"
    )
    return same


def _upstream(args: argparse.Namespace, g: torch.Generator) -> bool:
    """relaykit.generate vs Fast-dLLM v1's prefix-cache loop on the LLaDA twin: same threshold, same tokens."""
    from relaykit.testing.twins.llada import tiny_llada

    width, layers, vocab = args.upstream_width, args.upstream_layers, args.upstream_vocab
    model = tiny_llada(vocab=vocab, width=width, layers=layers, heads=max(1, width // 64), seed=args.seed)
    model = model.to(args.device)
    with torch.no_grad():  # a random head gives near-uniform predictions; a peaked one commits several per step
        model.model.transformer.ff_out.weight.mul_(8.0)
    relay = relaykit.attach(model)  # zero-initialised channel: relaykit.generate must give the upstream tokens
    mask = relay.mask_token_id
    prompt = torch.randint(0, mask, (1, args.prompt), generator=g).to(args.device)
    n_new, block, tau = args.upstream_new_tokens, args.block_size, args.threshold
    out: dict[str, torch.Tensor] = {}
    nfe: dict[str, int] = {}

    def run(which: str) -> None:
        if which == "upstream":
            out[which], nfe[which] = prefix_cache_loop(
                model, prompt, gen_length=n_new, block_length=block, threshold=tau, mask_id=mask
            )
        elif which == "session":  # the same loop with relay on, the way relaykit runs unchanged upstream loops
            with relay.session():
                out[which], nfe[which] = prefix_cache_loop(
                    model, prompt, gen_length=n_new, block_length=block, threshold=tau, mask_id=mask
                )
        else:
            res = relaykit.generate(
                relay, prompt, max_new_tokens=n_new, block_size=block, use_cache="prefix", policy=Threshold(tau)
            )
            out[which], nfe[which] = res.sequences, int(res.nfe.max())

    kinds = ("upstream", "session", "relaykit")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with torch.no_grad():
        for which in kinds:  # warm-up
            run(which)
        for i in range(args.repeats):  # interleaved, the order rotating: all three see the same load
            for which in kinds[i % 3 :] + kinds[: i % 3]:
                times[which].append(timed(args.device, run, which))
        if args.profile:
            profile("relaykit.generate on the LLaDA twin", lambda: run("relaykit"), args.device)
            profile("Fast-dLLM v1's prefix-cache loop on the LLaDA twin", lambda: run("upstream"), args.device)
    same = torch.equal(out["upstream"], out["relaykit"]) and torch.equal(out["session"], out["relaykit"])
    up_s, se_s, rk_s = (statistics.median(times[k]) for k in kinds)
    pair = statistics.median(u / r for u, r in zip(times["upstream"], times["relaykit"]))
    pair_se = statistics.median(u / r for u, r in zip(times["session"], times["relaykit"]))
    print(
        f"LLaDA twin (width {width}, {layers} layers, vocab {vocab}), {n_new} new tokens in blocks of {block}, "
        f"threshold {tau}, median of {args.repeats}:"
    )
    print(f"  Fast-dLLM v1 prefix-cache loop, bare backbone: {up_s:.3f} s, NFE {nfe['upstream']}")
    print(f"  the same loop inside relay.session() (relay on): {se_s:.3f} s, NFE {nfe['session']}")
    print(f"  relaykit.generate(use_cache='prefix') (relay on): {rk_s:.3f} s, NFE {nfe['relaykit']}")
    print(f"  identical tokens: {same}")
    print(
        f"relaykit / upstream throughput ratio: {up_s / rk_s:.3f} (median of paired ratios {pair:.3f}; goal >= 1.0); "
        f"relaykit / the upstream loop with relay: {se_s / rk_s:.3f} (paired {pair_se:.3f}): the loops alone"
    )
    print(
        "Fast-dLLM v2's own generate(): not compared (its loop commits each block's first token by argmax in the "
        "commit pass, before the block's first step, which relaykit.generate's policies do not do: no identical "
        "tokens to compare throughput on)"
    )
    return same
