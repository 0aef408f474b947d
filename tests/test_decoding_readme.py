"""The README's decoding snippets (see /work/notes/decoding.md) run as written.

The snippets are kept here verbatim; once README.md carries them (after the markers
``<!-- decoding: executed by tests/test_readme.py -->`` and ``<!-- decoding-cache: ... -->``), the README's
copy must equal this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tiny import TinyMDM, tiny_qwen2

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

DECODING = """\
import relaykit
from relaykit import Threshold, TopK

relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK)
res = relaykit.generate(relay, prompt, max_new_tokens=32, block_size=8, policy=TopK(2))
print(res.sequences.shape, res.nfe)  # (batch, prompt + 32) tokens, forward passes per sample
board = relaykit.generate(relay, puzzle, max_new_tokens=0, policy=Threshold(0.85), return_trajectory=True,
                          callback=lambda step, tokens: check(tokens))  # infill the masks, check every step
"""

DECODING_CACHE = """\
relay = relaykit.attach(hf_model)  # e.g. a Qwen2ForCausalLM trained as a block diffusion model
kw = dict(max_new_tokens=32, block_size=8, attention="block_causal", policy=Threshold(0.9))
cached = relaykit.generate(relay, prompt, use_cache=True, **kw)  # relay-free commit pass per block
assert (cached.sequences == relaykit.generate(relay, prompt, **kw).sequences).all()  # the cache is exact
"""


def _readme_copy(name: str) -> str | None:
    marker = f"<!-- {name}: executed by tests/test_readme.py -->"
    if marker not in README:
        return None
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
    for name, text in (("decoding", DECODING), ("decoding-cache", DECODING_CACHE)):
        copy = _readme_copy(name)  # once README.md carries the snippet, it must be this one
        assert copy is None or copy == text, f"README snippet {name!r} differs from tests/test_decoding_readme.py"
    ns = _namespace()
    exec(compile(DECODING, "README decoding", "exec"), ns)
    assert ns["res"].sequences.shape == (2, 40) and not (ns["res"].sequences == 31).any()
    board = ns["board"]
    assert not (board.sequences == 31).any()
    assert len(ns["checked"]) == len(board.trajectory) > 0
    exec(compile(DECODING_CACHE, "README decoding-cache", "exec"), ns)
    assert ns["cached"].nfe.gt(0).all()
