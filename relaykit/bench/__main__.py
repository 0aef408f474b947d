"""Dispatch ``python -m relaykit.bench <name> ...`` to ``relaykit.bench.<name>.main``."""

from __future__ import annotations

import importlib
import sys

from relaykit.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m relaykit.bench {" + ",".join(BENCHMARKS) + "} [options]\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<8} {what}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"relaykit.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
