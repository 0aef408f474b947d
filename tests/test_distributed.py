"""Multi-process training: 2 processes with gloo on CPU (torchrun) give the gradients of single-process training
on the same global batch, with DDP and with FSDP2 (fully_shard), through the persistent driver."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "training" / "ddp.py"


def load_example():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("ddp_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_gloo_processes_match_single_process_training(tmp_path: Path) -> None:
    dump, steps, global_batch = tmp_path / "grads.pt", 3, 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(EXAMPLE),
               "--wrap", "ddp", "fsdp", "--steps", str(steps), "--global-batch", str(global_batch),
               "--dtype", "float64", "--dump", str(dump)]  # fmt: skip
    for _attempt in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        # Under heavy CPU load a gloo worker was seen to die from a signal (about 1 full-suite run in 7, exit -6,
        # not reproducible alone). Launch once more only in that case; any other failure, and every gradient
        # check below, counts at once.
        if done.returncode == 0 or "(exitcode: -" not in done.stderr:
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = torch.load(dump, weights_only=True)

    ddp = load_example()
    relay = ddp.build(0, torch.float64)
    data = ddp.progressions(global_batch, 12, seed=0)  # the whole global batch in one process
    single = ddp.train(relay, relay, data, steps=steps, batch_size=global_batch, sync_counts=False)
    for how in ("ddp", "fsdp"):
        assert len(records[how]["grads"]) == steps
        for step, (got, want) in enumerate(zip(records[how]["grads"], single["grads"])):
            assert got.keys() == want.keys(), (how, step)
            assert any(name.endswith("relay_channel.proj.weight") for name in got)
            for name in want:
                msg = f"{how} step {step} {name}"
                torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=msg)
