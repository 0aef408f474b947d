"""Multi-process relay training with torch.distributed: DDP (or FSDP2's ``fully_shard``) around the RelayModel.

    torchrun --standalone --nproc_per_node 2 examples/training/ddp.py --steps 100     # gloo on CPU, nccl on GPUs
    torchrun --standalone --nproc_per_node 2 examples/training/ddp.py --wrap fsdp --steps 100

What matters:
* attach the relay BEFORE wrapping: its hooks and its channel (a child module) are then seen by DDP / FSDP;
* wrap the RelayModel and hand the wrapper to the driver: every backbone call then goes through the wrapper
  (relaykit finds the RelayModel inside with ``.module``);
* each rank keeps its own rows (its share of the global batch) and reads its own shard of the data;
* ``sync_counts=True`` divides each step's loss by the global number of masked tokens, so that DDP's gradient
  average equals single-process training on the global batch exactly (see ``--dump``, used by the tests).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import MASK, progressions, toy_mdm  # noqa: E402

import relaykit  # noqa: E402
from relaykit import PersistentRollout, RelayModel, TopK  # noqa: E402


def build(seed: int, dtype: torch.dtype) -> RelayModel:
    """The same model on every rank (same seed); a non-zero channel so that h matters from the first step."""
    torch.manual_seed(seed)
    relay = relaykit.attach(toy_mdm(width=16, layers=1).to(dtype), embedding="tok_emb", final_hidden="norm",
                            mask_token_id=MASK)  # fmt: skip
    with torch.no_grad():
        relay.channel.proj.weight.normal_(0.0, 0.2)
    return relay


def shard(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], rank: int, world: int) -> Iterator[Any]:
    """This rank's rows of every global batch: rows rank*b .. (rank+1)*b - 1."""
    for x0, maskable in batches:
        b = x0.shape[0] // world
        yield x0[rank * b : (rank + 1) * b], maskable[rank * b : (rank + 1) * b]


def train(model: torch.nn.Module, relay: RelayModel, data: Iterator[Any], *, steps: int, batch_size: int,
          sync_counts: bool, lr: float = 1e-2) -> dict[str, list[Any]]:  # fmt: skip
    """The training loop every rank runs; returns the loss and the (synchronised) gradients of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    # TopK(1) and >= length - 4 maskable positions per row: no row finishes (and is replaced) within the first
    # (length - 4) / 2 windows, so the rows of each rank stay the rows of the global batch
    driver = PersistentRollout(model, data, batch_size=batch_size, policy=TopK(1), sync_counts=sync_counts)
    record: dict[str, list[Any]] = {"loss": [], "grads": []}
    for _ in range(steps):
        res = driver.step()
        res.loss.backward()
        grads = {n: _full(p.grad).clone() for n, p in relay.named_parameters() if p.grad is not None}
        record["grads"].append(grads)
        record["loss"].append(res.loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return record


def _full(t: torch.Tensor) -> torch.Tensor:
    """A gathered copy of an FSDP2 sharded tensor (DTensor); plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def wrap(relay: RelayModel, how: str) -> torch.nn.Module:
    if how == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(relay)
    from torch.distributed.fsdp import fully_shard

    fully_shard(relay)  # FSDP2: shards the parameters in place; the module keeps its class and hooks
    return relay


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wrap", choices=["ddp", "fsdp"], nargs="+", default=["ddp"], help="several: one run each")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--length", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--dump", type=Path, default=None, help="rank 0 saves losses and gradients here (tests)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        records = {}
        for how in args.wrap:
            relay = build(args.seed, getattr(torch, args.dtype))
            if cuda:
                relay = relay.cuda()
            model = wrap(relay, how)
            data = shard(progressions(args.global_batch, args.length, seed=args.seed), rank, world)
            local = args.global_batch // world
            records[how] = train(model, relay, data, steps=args.steps, batch_size=local, sync_counts=True)
            if rank == 0:
                for step in itertools.islice(range(args.steps), 0, None, max(1, args.steps // 5)):
                    print(f"{how} step {step + 1}: rank-0 loss {records[how]['loss'][step].item():.4f}")
        if rank == 0 and args.dump is not None:
            torch.save(records, args.dump)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
