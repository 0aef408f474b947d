"""Benchmarks as commands: ``python -m relaykit.bench <name> [options]``, each printing ratios measured in one run.

Each benchmark is a module ``relaykit.bench.<name>`` with a ``main(argv: list[str] | None) -> int`` function.
"""

from __future__ import annotations

BENCHMARKS = {
    "memory": "peak training memory of Relay (K=2) vs plain masked-LM training",
    "decode": "relay hook overhead, cached / uncached decoding, relaykit.generate vs the upstream prefix-cache loop",
}


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: an int >= 1 (``--batch 0`` is a usage error, not a traceback)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value
