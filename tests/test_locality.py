"""Contracts 2 and 3: a forward writes h only at the positions it was fed whose input is the mask token;
once a position is committed its h, and so its input embedding, never change again."""

from __future__ import annotations

import pytest
import torch
from backbones import GENERIC, Backbone
from hypothesis import given
from hypothesis import strategies as st

import relaykit
from relaykit import RelayState


def capture_final_hidden(relay: relaykit.RelayModel) -> list[torch.Tensor]:
    """Record the final hidden state independently of relaykit's own hook (a second, test-only hook)."""
    seen: list[torch.Tensor] = []
    module, side = relay.adapter.final_hidden(relay.backbone)
    if side == "output":
        module.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    else:
        module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    return seen


def trained(bb: Backbone, **options: object) -> relaykit.RelayModel:
    relay = relaykit.attach(bb.build(), **bb.attach_kwargs, **options)  # type: ignore[arg-type]
    torch.manual_seed(1)
    torch.nn.init.normal_(relay.channel.proj.weight, std=0.5)  # a non-trivial channel
    return relay


examples = st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(0, 3), st.integers(0, 2**16), st.floats(0, 1))


@pytest.mark.parametrize("update", ["masked", "all"])
@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_contract2_forward_writes_only_fed_masked_positions(bb: Backbone, update: str) -> None:
    relay = trained(bb, update=update)
    seen = capture_final_hidden(relay)
    d = relay.channel.config.hidden_size

    @given(examples)
    def check(example: tuple) -> None:
        b, n, extra, seed, frac = example
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, bb.vocab - 1, (b, n), generator=g)
        ids[torch.rand(b, n, generator=g) < frac] = bb.mask_id
        before = RelayState(torch.randn(b, n + extra, d, generator=g), torch.rand(b, n + extra, generator=g) < 0.5)
        seen.clear()
        with torch.no_grad():
            after = relay(ids, state=before).state
        hidden = seen[-1]  # (b, n, d) what the backbone produced
        written = ids == bb.mask_id if update == "masked" else torch.ones_like(ids, dtype=torch.bool)
        fed = torch.zeros(b, n + extra, dtype=torch.bool)
        fed[:, :n] = written
        assert torch.equal(after.hidden[~fed], before.hidden[~fed])  # bit for bit everywhere else
        assert torch.equal(after.filled[~fed], before.filled[~fed])
        assert torch.equal(after.hidden[:, :n][written], hidden[written])
        assert bool(after.filled[:, :n][written].all())

    check()


def test_contract2_cached_call_writes_only_its_own_absolute_positions() -> None:
    from transformers import DynamicCache

    bb = GENERIC[1]  # transformers Qwen2 through the HF getters
    relay = trained(bb)
    mask = bb.mask_id

    @given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**16))
    def check(prefix: int, q: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, bb.vocab - 1, (2, prefix + q), generator=g)
        ids[:, prefix:][torch.rand(2, q, generator=g) < 0.7] = mask
        cache = DynamicCache()
        with torch.no_grad():
            first = relay(ids[:, :prefix], past_key_values=cache, use_cache=True)
            before = first.state.extend(prefix + q)
            out = relay(ids[:, prefix:], state=before, past_key_values=cache, use_cache=True)
        assert out.positions is not None and out.positions[0].tolist() == list(range(prefix, prefix + q))
        assert torch.equal(out.state.hidden[:, :prefix], before.hidden[:, :prefix])
        written = ids[:, prefix:] == mask
        assert torch.equal(out.state.filled[:, prefix:], written)

    check()


@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_contract3_committed_positions_are_frozen(bb: Backbone) -> None:
    relay = trained(bb)

    @given(st.integers(1, 3), st.integers(2, 10), st.integers(0, 2**16), st.lists(st.integers(1, 4), min_size=1))
    def check(b: int, n: int, seed: int, commits_per_step: list[int]) -> None:
        g = torch.Generator().manual_seed(seed)
        target = torch.randint(0, bb.vocab - 1, (b, n), generator=g)
        z = torch.full((b, n), bb.mask_id)
        state = None
        frozen: dict[tuple[int, int], torch.Tensor] = {}
        embed = relay.adapter.embedding(relay.backbone)
        seen_embeddings: list[torch.Tensor] = []
        handle = embed.register_forward_hook(lambda m, a, o: seen_embeddings.append(o.detach().clone()), prepend=False)
        try:
            embedded_at_commit: dict[tuple[int, int], torch.Tensor] = {}
            for k in commits_per_step + [n]:
                with torch.no_grad():
                    state = relay(z, state=state).state
                for (r, i), h in frozen.items():
                    assert torch.equal(state.hidden[r, i], h), f"h of committed position {(r, i)} changed"
                    assert torch.equal(seen_embeddings[-1][r, i], embedded_at_commit[(r, i)])
                for r in range(b):  # commit k more positions per row, in a seeded order
                    open_pos = (z[r] == bb.mask_id).nonzero().flatten()
                    chosen = open_pos[torch.randperm(len(open_pos), generator=g)[:k]]
                    z[r, chosen] = target[r, chosen]
                    for i in chosen.tolist():
                        frozen[(r, i)] = state.hidden[r, i].clone()
                with torch.no_grad():  # the embedding a committed position receives from now on
                    relay(z, state=state)
                for r in range(b):
                    for i in range(n):
                        if (r, i) in frozen and (r, i) not in embedded_at_commit:
                            embedded_at_commit[(r, i)] = seen_embeddings[-1][r, i]
                if bool((z != bb.mask_id).all()):
                    break
        finally:
            handle.remove()

    check()
