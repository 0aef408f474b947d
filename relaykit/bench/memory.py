"""``python -m relaykit.bench memory``: peak memory of one training micro-step, Relay (K=2) vs plain masked-LM.

One micro-step = forward(s) + loss + backward, no optimiser step. Measured in one run, each on the same model:

* plain MLM at batch B (one forward, random mask ratio, no relay) and at 2B: the same B samples twice with
  complementary masks, the Fast-dLLM v2 SFT setting;
* Relay K=2 at batch B, full BPTT (and Relay (sg)), on the same B samples at the same random progress, with h
  filled by an earlier window (rows of a persistent rollout are at every stage of their denoising).

The paper reports Relay K=2 at 0.95x of SFT at 2B (20.1 vs 21.2 GiB, Fast-dLLM v2 1.5B); the goal here is <= 1.1x.
On CUDA the figure is ``max_memory_allocated``; on CPU it is the peak of live tensor storage counted by a
dispatch mode (see :mod:`relaykit.bench._peak`). Both include parameters and gradients; neither includes
optimiser state.

Example::

    python -m relaykit.bench memory --backbone encoder --width 256 --layers 4 --length 256 --batch 4
    python -m relaykit.bench memory --backbone qwen2 --vocab 32000 --checkpointing --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from relaykit.attach import attach
from relaykit.bench import positive_int
from relaykit.bench._peak import Peak, measure
from relaykit.policies import TopK
from relaykit.relay import RelayModel
from relaykit.rollout import _step_loss_terms, bptt_rollout, initial_z
from relaykit.testing.encoder import ToyEncoder


def build(args: argparse.Namespace) -> RelayModel:
    """The backbone named by ``--backbone`` with a relay attached (random, non-zero channel)."""
    torch.manual_seed(0)
    mask = args.vocab - 1
    if args.backbone == "encoder":
        model: nn.Module = ToyEncoder(args.vocab, args.width, args.layers, args.heads, args.length)
        if args.checkpointing:
            raise SystemExit("--checkpointing needs an HF backbone (--backbone qwen2 or llama)")
        relay = attach(model, embedding="tok_emb", final_hidden="norm", mask_token_id=mask)
    else:
        import transformers  # an optional dependency: only for the HF backbones

        config_cls = transformers.Qwen2Config if args.backbone == "qwen2" else transformers.LlamaConfig
        model_cls = transformers.Qwen2ForCausalLM if args.backbone == "qwen2" else transformers.LlamaForCausalLM
        config = config_cls(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=4 * args.width,
                            num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            num_key_value_heads=args.heads, max_position_embeddings=max(args.length, 64),
                            tie_word_embeddings=False, use_cache=False)  # fmt: skip
        if args.backbone == "llama":
            config.is_causal = False
        model = model_cls(config)
        if args.checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        relay = attach(model, mask_token_id=mask)
    relay.train()
    with torch.no_grad():
        relay.channel.proj.weight.normal_(0.0, 0.02)
    return relay.to(args.device)


def freeze_backbone(relay: RelayModel, frozen: bool) -> None:
    """Train the relay channel only (frozen) or everything."""
    for p in relay.backbone.parameters():
        p.requires_grad_(not frozen)
    for p in relay.relay_parameters():
        p.requires_grad_(True)


def batch(args: argparse.Namespace, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    x0 = torch.randint(0, args.vocab - 1, (b, args.length), generator=g).to(args.device)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, : args.length // 8] = False  # a prompt
    return x0, maskable


def micro_steps(relay: RelayModel, args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The training micro-steps to measure, each a closure doing forward + backward."""
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast(args.device.type, dtype=torch.bfloat16))
        if args.dtype == "bfloat16"
        else contextlib.nullcontext
    )
    b = args.batch
    x_b, m_b = batch(args, b)
    g = torch.Generator(args.device).manual_seed(0)
    z_b = initial_z(x_b, m_b, relay.mask_token_id, init="random", generator=g)  # (b, n) random mask ratio
    # Fast-dLLM v2 SFT: each sample twice, with complementary masks, so the forward runs at batch 2B
    x_2b, m_2b = torch.cat([x_b, x_b]), torch.cat([m_b, m_b])
    z_2b = torch.cat([z_b, torch.where((z_b == x_b) & m_b, relay.mask_token_id, x_b)])  # (2b, n)
    policy = TopK(max(1, args.length // 16))
    with torch.no_grad(), autocast():  # rows mid-rollout (random progress), h filled by an earlier window
        warm = bptt_rollout(relay, x_b, maskable=m_b, k=1, z=z_b, policy=policy)

    def mlm(x0: torch.Tensor, maskable: torch.Tensor, z: torch.Tensor) -> Callable[[], None]:
        def run() -> None:  # plain masked-LM: one bare forward, CE on the masked positions, backward; no commit
            with autocast(), relay.disabled():
                logits = relay(z).logits  # (b, n, V)
                num, den = _step_loss_terms(logits, x0, (z == relay.mask_token_id) & maskable, maskable,
                                            loss="mean", token_shift=relay.adapter.token_shift)  # fmt: skip
                del logits
            (num / den).backward()

        return run

    def relay_step(stop_gradient: bool) -> Callable[[], None]:
        def run() -> None:
            with autocast():
                res = bptt_rollout(relay, x_b, maskable=m_b, k=args.k, policy=policy, z=warm.z, state=warm.state,
                                   stop_gradient=stop_gradient)  # fmt: skip
            res.loss.backward()

        return run

    return {
        f"plain MLM, batch {b}": mlm(x_b, m_b, z_b),
        f"plain MLM, batch {2 * b} (compl.)": mlm(x_2b, m_2b, z_2b),
        f"Relay K={args.k}, batch {b}": relay_step(False),
        f"Relay (sg) K={args.k}, batch {b}": relay_step(True),
    }


def run(args: argparse.Namespace) -> dict[str, Peak]:
    relay = build(args)
    results: dict[str, Peak] = {}
    for name, step in micro_steps(relay, args).items():
        # --frozen: relay trains its channel only; plain MLM (which has nothing else to train) stays full SFT
        freeze_backbone(relay, args.frozen and name.startswith("Relay"))
        relay.zero_grad(set_to_none=True)
        results[name] = measure(step, static=[*relay.parameters(), *relay.buffers()], device=args.device)
    relay.zero_grad(set_to_none=True)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m relaykit.bench memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--backbone", choices=["encoder", "qwen2", "llama"], default="encoder")
    p.add_argument("--width", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--vocab", type=positive_int, default=4096)
    p.add_argument("--length", type=positive_int, default=256)
    p.add_argument("--batch", type=positive_int, default=4, help="B: relay runs at B, plain MLM at B and 2B")
    p.add_argument("--k", type=positive_int, default=2, help="relay window K")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: autocast")
    p.add_argument("--frozen", action="store_true", help="relay trains its channel only (plain MLM stays full SFT)")
    p.add_argument("--checkpointing", action="store_true", help="HF per-layer gradient checkpointing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cpu":
        torch.set_num_threads(1)
    report(run(args), args)
    return 0


def report(results: dict[str, Peak], args: argparse.Namespace) -> None:
    """Print the table and the ratios."""
    mib = 2.0**20
    first = next(iter(results.values()))
    print(f"peak memory of one training micro-step ({args.backbone}, width {args.width}, {args.layers} layers, "
          f"vocab {args.vocab}, length {args.length}, {args.dtype}{', relay frozen backbone' if args.frozen else ''}"
          f"{', checkpointing' if args.checkpointing else ''}; {first.method}, {args.device})")  # fmt: skip
    print(f"{'':32} {'peak MiB':>10} {'of which static':>16} {'saved for bwd':>14}")
    for name, peak in results.items():
        print(f"{name:32} {peak.total / mib:10.1f} {peak.static / mib:16.1f} {peak.saved / mib:14.1f}")
    names = list(results)
    plain_b, plain_2b, relay_full, relay_sg = (results[n].total for n in names)
    print(f"Relay K={args.k} at B / plain at 2B: {relay_full / plain_2b:.3f}x (goal <= 1.1x; paper 0.95x)")
    print(f"Relay K={args.k} at B / plain at B:  {relay_full / plain_b:.3f}x")
    print(f"Relay (sg) at B / plain at 2B:   {relay_sg / plain_2b:.3f}x")
