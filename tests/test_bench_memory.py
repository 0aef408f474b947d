"""The memory benchmark: its CPU counter is exact on known allocations, and the command prints the ratios."""

from __future__ import annotations

import pytest
import torch

from relaykit.bench import _peak, memory
from relaykit.bench.__main__ import main as bench_main


def test_live_bytes_counts_allocations_and_frees_exactly() -> None:
    with _peak.LiveBytes() as counter:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.ones(500, dtype=torch.float64)  # 4000 bytes
        view = a[:10]  # no new storage
        del b
        c = torch.empty(250, dtype=torch.int32)  # 1000 bytes
        a.add_(1)  # in place: no new storage
    assert counter.peak == 8000 and counter.live == 5000
    del a, c, view
    assert counter.live == 0


def test_measure_counts_backward_and_static_once() -> None:
    lin = torch.nn.Linear(64, 32, bias=False)
    shared = [lin.weight, lin.weight]  # the same storage twice (e.g. tied embeddings) counts once
    x = torch.randn(16, 64)

    def step() -> None:
        lin(x).sum().backward()

    peak = _peak.measure(step, static=shared, device=torch.device("cpu"))
    assert peak.static == 64 * 32 * 4
    assert peak.dynamic >= 64 * 32 * 4  # at least the weight's gradient, allocated during backward
    assert lin.weight.grad is not None
    assert peak.saved == 16 * 64 * 4  # Linear saves its input for the weight gradient


def test_memory_benchmark_reports_ratios(capsys) -> None:  # noqa: ANN001
    argv = ["--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--length", "32", "--batch", "2"]
    args = memory.parser().parse_args(argv)
    args.device = torch.device("cpu")
    results = memory.run(args)
    memory.report(results, args)
    out = capsys.readouterr().out
    assert "Relay K=2 at B / plain at 2B:" in out and "Relay K=2 at B / plain at B:" in out
    plain_b, plain_2b, relay_full, relay_sg = results.values()
    assert relay_full.saved > plain_b.saved  # K = 2 forwards are kept for backward, not one
    assert relay_full.static == plain_b.static == plain_2b.static
    assert relay_sg.total > 0 and relay_full.method.startswith("live tensor storage")


def test_the_command_is_dispatched(capsys) -> None:  # noqa: ANN001
    assert bench_main([]) == 2 and "memory" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse's --help
        bench_main(["memory", "--help"])
    assert exit_info.value.code == 0
    assert "Relay (K=2) vs plain masked-LM" in capsys.readouterr().out
