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
    args += ["--upstream-new-tokens", "16"]
    assert "decode" in BENCHMARKS
    assert dispatch(args) == 0
    out = capsys.readouterr().out
    assert "hook overhead" in out and "median of paired ratios" in out
    assert "identical outputs: True" in out
    assert "cached / uncached throughput ratio" in out and "the ceiling at this setting" in out
    assert "identical tokens: True" in out  # relaykit.generate vs Fast-dLLM v1's prefix-cache loop
    assert "relaykit / upstream throughput ratio" in out and "the loops alone" in out
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
