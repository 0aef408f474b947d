"""The README's decoding snippets (after the markers ``<!-- decoding: ... -->`` and ``<!-- decoding-cache: ...
-->``) run as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tiny import TinyMDM, tiny_qwen2

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _readme_copy(name: str) -> str:
    marker = f"<!-- {name}: executed by tests/test_readme.py -->"
    assert marker in README, f"README.md lost the {name!r} snippet"
    return README.split(marker)[1].split("```python\n")[1].split("```")[0]


def _namespace() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    puzzle = torch.randint(0, 9, (2, 16), generator=g)
    puzzle[torch.rand(2, 16, generator=g) < 0.5] = 31
    checked: list[torch.Tensor] = []
    return {
        "model": TinyMDM(max_len=64),
        "MASK": 31,
        "prompt": torch.randint(0, 30, (2, 8), generator=g),
        "puzzle": puzzle,
        "check": checked.append,
        "checked": checked,
        "hf_model": tiny_qwen2(),
    }


def test_decoding_snippets_run_as_written() -> None:
    ns = _namespace()
    exec(compile(_readme_copy("decoding"), "README decoding", "exec"), ns)
    assert ns["res"].sequences.shape == (2, 40) and not (ns["res"].sequences == 31).any()
    board = ns["board"]
    assert not (board.sequences == 31).any()
    assert len(ns["checked"]) == len(board.trajectory) > 0
    exec(compile(_readme_copy("decoding-cache"), "README decoding-cache", "exec"), ns)
    assert ns["cached"].nfe.gt(0).all()
