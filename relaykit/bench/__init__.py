"""Benchmarks as commands: ``python -m relaykit.bench <name> [options]``, each printing ratios measured in one run.

Each benchmark is a module ``relaykit.bench.<name>`` with a ``main(argv: list[str] | None) -> int`` function.
"""

from __future__ import annotations

BENCHMARKS = {
    "memory": "peak training memory of Relay (K=2) vs plain masked-LM training",
    "decode": "relay hook overhead and cached / uncached decoding throughput",
}
