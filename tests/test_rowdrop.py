"""generate(..., drop_finished_rows=True): only rows with something left to fill are fed, with the same tokens, NFE
and states as the full-batch loop (float64, bit for bit); refused with a KV cache; RelayState.put_rows."""

from __future__ import annotations

import pytest
import torch
from tiny import MASK_ID, TinyMDM, tiny_qwen2

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.policies import Threshold
from relaykit.state import RelayState


def _mdm(update: str = "masked", empty: str = "skip") -> relaykit.RelayModel:
    torch.manual_seed(0)
    relay = relaykit.attach(
        TinyMDM(max_len=96).double(),
        embedding="encoder.tok_emb",
        final_hidden="encoder.norm",
        mask_token_id=MASK_ID,
        update=update,  # type: ignore[arg-type]
        empty=empty,  # type: ignore[arg-type]
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero channel, so that the carried state changes the outputs
        w = relay.channel.proj.weight
        w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.3)
    return relay


def _canvas(rows: int = 5, length: int = 40) -> torch.Tensor:
    """Rows with 1 .. many masks, so that they finish at different steps."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, MASK_ID, (rows, length), generator=g)
    for r in range(rows):
        x[r, torch.randperm(length, generator=g)[: 1 + 8 * r]] = MASK_ID
    return x


def _run(relay: relaykit.RelayModel, x: torch.Tensor, drop: bool, **kw: object) -> tuple[object, list[torch.Tensor]]:
    boards: list[torch.Tensor] = []
    out = relaykit.generate(
        relay,
        x.clone(),
        max_new_tokens=0,
        policy=Threshold(0.3),
        callback=lambda step, tokens: boards.append(tokens),
        drop_finished_rows=drop,
        **kw,  # type: ignore[arg-type]
    )
    return out, boards


@pytest.mark.parametrize(
    ("update", "empty", "block_size"),
    [("masked", "skip", None), ("all", "zero", None), ("masked", "skip", 10)],
)
def test_same_tokens_nfe_and_boards_as_the_full_batch(update: str, empty: str, block_size: int | None) -> None:
    relay = _mdm(update, empty)
    x = _canvas()
    full, full_boards = _run(relay, x, False, block_size=block_size)
    part, part_boards = _run(relay, x, True, block_size=block_size)
    assert torch.equal(full.sequences, part.sequences)
    assert torch.equal(full.nfe, part.nfe) and torch.equal(full.steps, part.steps)
    assert len(full_boards) == len(part_boards)
    assert all(torch.equal(a, b) for a, b in zip(full_boards, part_boards, strict=True))
    assert int(full.nfe.min()) < int(full.nfe.max())  # the rows did finish at different steps


def test_same_result_with_relay_disabled_and_with_a_given_state() -> None:
    relay = _mdm()
    x = _canvas()
    with relay.disabled():
        assert torch.equal(_run(relay, x, False)[0].sequences, _run(relay, x, True)[0].sequences)
    g = torch.Generator().manual_seed(3)
    state = RelayState(torch.randn(5, 40, 16, generator=g, dtype=torch.float64), torch.rand(5, 40, generator=g) < 0.5)
    a, b = _run(relay, x, False, state=state)[0], _run(relay, x, True, state=state)[0]
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)


def test_finished_rows_are_not_fed() -> None:
    relay = _mdm()
    x = _canvas()
    fed: list[int] = []
    handle = relay.backbone.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[0]))
    try:
        out, _ = _run(relay, x, True)
    finally:
        handle.remove()
    assert fed[0] == 5 and fed[-1] < 5 and fed == sorted(fed, reverse=True)
    assert sum(fed) == int(out.nfe.sum())  # one fed row per forward pass a row pays for


def test_refused_with_a_kv_cache() -> None:
    relay = relaykit.attach(tiny_qwen2(), adapter=GenericAdapter(token_shift=1), mask_token_id=47)
    with pytest.raises(ValueError, match="drop_finished_rows=True decodes without a cache only.*use_cache='prefix'"):
        relaykit.generate(
            relay,
            torch.randint(0, 40, (2, 4)),
            max_new_tokens=8,
            block_size=4,
            use_cache=True,
            attention="block_causal",
            drop_finished_rows=True,
        )


def test_put_rows_is_the_inverse_of_select() -> None:
    g = torch.Generator().manual_seed(0)
    s = RelayState(torch.randn(4, 6, 3, generator=g), torch.rand(4, 6, generator=g) < 0.5, offset=2)
    part = RelayState(torch.ones(2, 6, 3), torch.ones(2, 6, dtype=torch.bool), offset=2)
    t = s.put_rows([3, 1], part)
    assert torch.equal(t.select([3, 1]).hidden, part.hidden) and bool(t.filled[[1, 3]].all())
    assert torch.equal(t.select([0, 2]).hidden, s.select([0, 2]).hidden)
    assert torch.equal(s.put_rows([0, 2], s.select([0, 2])).hidden, s.hidden)
    with pytest.raises(ValueError, match=r"put_rows: 2 row\(s\) covering positions 2..7 expected, got a state of 1"):
        s.put_rows([0, 2], part.select([0]))
