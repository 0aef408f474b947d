"""``python -m relaykit.bench decode``: relay hook overhead and cached / uncached decoding throughput, one run.

Both figures come from the same backbone (a plain-PyTorch block-diffusion transformer, default 512 wide and 8
layers, random weights, a random non-zero relay channel) measured in one process:

* hook overhead = median time of a relay forward (state in, new state out) / median time of the bare backbone's
  forward on the same tokens, interleaved; goal <= 1.03;
* cache speed-up = uncached decode time / cached decode time for ``--new-tokens`` tokens in blocks of
  ``--block-size`` with the exact block-level prefix cache (block-causal attention), after checking both decodes
  give identical tokens; goal >= 3.

The machine may be shared: timings are interleaved and repeated, and medians are reported (of the times and of
the paired ratios).

Example::

    python -m relaykit.bench decode                       # 512 x 8 layers, 256 new tokens in blocks of 32
    python -m relaykit.bench decode --width 128 --layers 2 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import relaykit
from relaykit.bench import positive_int
from relaykit.bench.backbone import BenchTransformer
from relaykit.policies import TopK


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
    return p.parse_args(argv)


def hook_overhead(relay: relaykit.RelayModel, ids: torch.Tensor, forwards: int) -> tuple[float, float, float, float]:
    """Relay vs bare forward, interleaved: (median relay s, median bare s, median paired ratio, ratio of minima)."""
    with torch.no_grad():
        state = relay(ids).state  # h filled at the masked positions: the channel really runs
        for _ in range(3):  # warm-up
            relay(ids, state=state)
            relay.backbone(ids)
        relay_t, bare_t = [], []
        for i in range(forwards):
            order = (True, False) if i % 2 == 0 else (False, True)  # alternate which goes first
            for with_relay in order:
                t0 = time.perf_counter()
                if with_relay:
                    relay(ids, state=state)
                else:
                    relay.backbone(ids)
                (relay_t if with_relay else bare_t).append(time.perf_counter() - t0)
    ratios = [r / b for r, b in zip(relay_t, bare_t)]
    return statistics.median(relay_t), statistics.median(bare_t), statistics.median(ratios), min(relay_t) / min(bare_t)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    total = args.prompt + args.new_tokens
    model = BenchTransformer(args.vocab, args.width, args.layers, args.heads, max_len=max(total, args.forward_length))
    model.eval()
    relay = relaykit.attach(model)
    with torch.no_grad():
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape) * 0.02)  # a "trained" channel: R(h) != 0
    mask = relay.mask_token_id
    print(
        f"backbone: {type(model).__name__} width={args.width} layers={args.layers} heads={args.heads} "
        f"vocab={args.vocab}, float32, {args.threads} thread(s)"
    )

    # ---- hook overhead
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab - 1, (1, args.forward_length), generator=g)
    ids[:, args.forward_length // 2 :] = mask  # half the sequence still masked
    relay_s, bare_s, pair, fastest = hook_overhead(relay, ids, args.forwards)
    print(
        f"hook overhead (length {args.forward_length}, {args.forwards} forwards each): relay {relay_s * 1e3:.2f} ms / "
        f"bare {bare_s * 1e3:.2f} ms = {relay_s / bare_s:.4f}; median of paired ratios {pair:.4f}; ratio of "
        f"fastest {fastest:.4f} (goal <= 1.03)"
    )

    # ---- cached / uncached decoding
    prompt = torch.randint(0, args.vocab - 1, (1, args.prompt), generator=g)
    kw = dict(
        max_new_tokens=args.new_tokens,
        block_size=args.block_size,
        policy=TopK(args.per_step),
        attention="block_causal",
    )
    results: dict[bool, relaykit.GenerateResult] = {}

    def run(cached: bool) -> None:
        results[cached] = relaykit.generate(relay, prompt, use_cache=cached, **kw)

    run(True)  # warm-up
    u_all, c_all = [], []
    for i in range(args.repeats):  # interleaved, alternating which goes first: both see the same load
        for cached in (True, False) if i % 2 else (False, True):
            t0 = time.perf_counter()
            run(cached)
            (c_all if cached else u_all).append(time.perf_counter() - t0)
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
        f"goal >= 3x)"
    )
    return 0 if same else 1
