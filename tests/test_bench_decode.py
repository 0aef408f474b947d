"""``python -m relaykit.bench decode`` runs end to end (tiny sizes: the figures themselves are not asserted)."""

from __future__ import annotations

import torch

from relaykit.bench import BENCHMARKS
from relaykit.bench.__main__ import main as dispatch
from relaykit.bench.backbone import BenchTransformer


def test_decode_benchmark_runs_and_finds_identical_outputs(capsys):
    args = ["decode", "--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--prompt", "8"]
    args += ["--new-tokens", "16", "--block-size", "8", "--forward-length", "32", "--forwards", "2", "--repeats", "1"]
    args += ["--upstream-width", "32", "--upstream-layers", "1", "--upstream-vocab", "64"]
    args += ["--upstream-new-tokens", "16", "--device", "cpu", "--profile"]
    assert "decode" in BENCHMARKS
    assert dispatch(args) == 0
    out = capsys.readouterr().out
    assert "hook overhead" in out and "median of paired ratios" in out
    assert "identical outputs: True" in out
    assert "cached / uncached throughput ratio" in out and "the ceiling at this setting" in out
    assert "identical tokens: True" in out  # relaykit.generate vs Fast-dLLM v1's prefix-cache loop
    assert "relaykit / upstream throughput ratio" in out and "the loops alone" in out
    assert out.count("where the time goes") == 3 and "aten::" in out  # --profile: the cached decode, both loops
    assert "wall time of each part (s): overhead" in out
    torch.set_num_threads(1)  # the benchmark sets threads; restore the test default


def test_bench_backbone_cache_matches_a_block_causal_forward():
    torch.manual_seed(0)
    model = BenchTransformer(vocab=64, width=32, layers=2, heads=4, max_len=64).double().eval()
    ids = torch.randint(0, 63, (2, 12))
    segment = (torch.arange(12) >= 7).long()  # two segments: 0..6 and 7..11
    allowed = (segment[None, :] <= segment[:, None])[None, None]  # (1, 1, q, kv)
    with torch.no_grad():
        full = model(ids, attention_mask=allowed).logits
        prefix = model(ids[:, :7], use_cache=True).past_key_values
        rest = model(ids[:, 7:], past_key_values=prefix).logits
    torch.testing.assert_close(rest, full[:, 7:], rtol=0, atol=1e-12)


def test_compiled_decoding_path_runs_on_cpu_and_keeps_the_tokens(capsys):
    """``--cuda-graphs`` on CPU: the same compiled path with backend aot_eager (no graphs), saying so."""
    args = ["decode", "--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--prompt", "8"]
    args += ["--new-tokens", "8", "--block-size", "8", "--forward-length", "16", "--forwards", "1", "--repeats", "1"]
    args += ["--skip", "overhead", "cache", "upstream", "--device", "cpu", "--cuda-graphs"]
    try:
        assert dispatch(args) == 0
    finally:
        torch.set_num_threads(1)
        torch._dynamo.reset()
    out = capsys.readouterr().out
    assert "CUDA graphs need CUDA, so no graphs here" in out
    assert "same argmax tokens as eager: True" in out
    assert "uncached decode of 8 tokens" in out and "identical tokens: True" in out
    assert "wall time of each part (s): cuda-graphs" in out


def test_copied_clones_every_tensor_in_nested_outputs():
    from relaykit.bench.graphs import _copied
    from relaykit.slots import RelayOutput
    from relaykit.state import RelayState

    state = RelayState(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), offset=4)
    out = RelayOutput(torch.ones(1, 2, 5), state, [(torch.ones(2),)], torch.arange(2))
    got = _copied(out)
    assert got.state.offset == 4 and torch.equal(got.logits, out.logits) and torch.equal(got.state.hidden, state.hidden)
    for a, b in ((got.logits, out.logits), (got.state.hidden, state.hidden), (got.output[0][0], out.output[0][0])):
        assert a.data_ptr() != b.data_ptr()


def test_decode_refuses_a_device_it_does_not_have(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, on any machine
    try:
        dispatch(["decode", "--device", "cuda"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--device cuda without CUDA must be a usage error")
    assert "CUDA is not available" in capsys.readouterr().err


def test_cpu_clock_times_this_process_and_only_on_one_cpu_thread(capsys):
    args = ["decode", "--width", "32", "--layers", "1", "--heads", "2", "--vocab", "64", "--forward-length", "16"]
    args += ["--forwards", "2", "--skip", "cache", "upstream", "--clock", "cpu"]
    try:
        assert dispatch(args) == 0
        assert "1 CPU thread(s), process CPU time clock" in capsys.readouterr().out
        try:
            dispatch([*args, "--threads", "2"])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError("--clock cpu with 2 threads must be a usage error")
        assert "--clock cpu measures one CPU thread's work" in capsys.readouterr().err
    finally:
        import time

        from relaykit.bench import timing

        timing.CLOCK = time.perf_counter  # back to the wall clock for later runs in this process
        torch.set_num_threads(1)
