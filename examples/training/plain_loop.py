"""Relay training in a plain PyTorch loop: attach, a persistent rollout driver, your own optimiser step.

    python examples/training/plain_loop.py --steps 200 --method relay
    python examples/training/plain_loop.py --method mlm        # the baselines: mlm, rollout, relay_sg, relay

The loop is yours; relaykit only supplies the loss of one truncated-BPTT window per optimiser step
(``driver.step()``) and keeps each sample's (z, h) between steps. Checkpoints hold the driver's state next to the
model's and the optimiser's, so a resumed run continues exactly (``--resume``). ``--out DIR`` saves the trained
model with ``relay.save_pretrained`` (the channel and the trained backbone) and reloads it onto a fresh copy of the
original backbone with ``RelayModel.from_pretrained``, checking that it gives the trained logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import MASK, progressions, toy_mdm  # noqa: E402

import relaykit  # noqa: E402
from relaykit import PersistentRollout, Threshold  # noqa: E402


def build(method: str, *, batch_size: int, length: int, seed: int) -> tuple[relaykit.RelayModel, PersistentRollout]:
    torch.manual_seed(seed)
    relay = relaykit.attach(toy_mdm(), embedding="tok_emb", final_hidden="norm", mask_token_id=MASK)
    data = progressions(batch_size, length, seed=seed)
    driver = PersistentRollout(relay, data, method=method, policy=Threshold(0.9), seed=seed)
    return relay, driver


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="relay", choices=sorted(relaykit.METHODS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None, help="save model, optimiser and driver state here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", type=Path, default=None, help="save_pretrained folder; reloaded and checked at the end")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    relay, driver = build(args.method, batch_size=args.batch_size, length=args.length, seed=args.seed)
    opt = torch.optim.AdamW(relay.parameters(), lr=args.lr)
    start = 0
    if args.resume:
        ckpt = torch.load(args.checkpoint, weights_only=True)
        relay.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        driver.load_state_dict(ckpt["driver"])  # the data stream is re-created and fast-forwarded
        start = ckpt["step"]

    losses: list[float] = []
    for step in range(start, args.steps):
        res = driver.step()  # K teacher-forced steps on every row; finished rows restart
        res.loss.backward()  # gradients flow through h across the window
        torch.nn.utils.clip_grad_norm_(relay.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(res.loss.item())
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}: loss {res.loss.item():.3f} commit accuracy {res.commit_accuracy:.2f}")
    if args.checkpoint is not None:
        state = {"model": relay.state_dict(), "optimizer": opt.state_dict(), "driver": driver.state_dict()}
        torch.save({**state, "step": args.steps}, args.checkpoint)
    if args.out is not None:
        relay.save_pretrained(args.out)  # the channel and, as the optimiser trained it, the backbone
        torch.manual_seed(args.seed)
        restored = relaykit.RelayModel.from_pretrained(toy_mdm(), args.out)  # a fresh copy of the original backbone
        z = torch.full((2, args.length), MASK)
        with torch.no_grad():
            same = torch.equal(restored(z, state=restored(z).state).logits, relay(z, state=relay(z).state).logits)
        print(f"saved to {args.out}; reloaded onto a fresh backbone, logits equal to the trained model's: {same}")
    return losses


if __name__ == "__main__":
    main()
