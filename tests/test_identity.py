"""Contract 1: a zero-initialised relay leaves the backbone's logits bit-identical, for any input and any state."""

from __future__ import annotations

import pytest
import torch
from backbones import GENERIC, Backbone, logits_of
from hypothesis import given
from hypothesis import strategies as st

import relaykit
from relaykit import RelayState

# (batch, length, extra state positions, seed, mask fraction, with a state?)
examples = st.tuples(
    st.integers(1, 3), st.integers(1, 12), st.integers(0, 4), st.integers(0, 2**16), st.floats(0, 1), st.booleans()
)


def make_input(bb: Backbone, d: int, example: tuple) -> tuple[torch.Tensor, RelayState | None]:
    b, n, extra, seed, frac, with_state = example
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, bb.vocab - 1, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) < frac] = bb.mask_id
    if not with_state:
        return ids, None
    hidden = torch.randn(b, n + extra, d, generator=g) * 10  # (b, n', d): any state at all
    filled = torch.rand(b, n + extra, generator=g) < 0.5
    return ids, RelayState(hidden, filled)


@pytest.mark.parametrize("kind", ["linear", "mlp", "gated"])
@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_contract1_zero_initialised_relay_is_identity_on_generic_backbones(bb: Backbone, kind: str) -> None:
    model = bb.build()
    relay = relaykit.attach(model, kind=kind, **bb.attach_kwargs)
    d = relay.channel.config.hidden_size

    @given(examples)
    def check(example: tuple) -> None:
        ids, state = make_input(bb, d, example)
        with torch.no_grad():
            bare = logits_of(model(ids))  # no slot active: hooks are no-ops
            out = relay(ids, state=state)
        assert torch.equal(out.logits, bare)

    check()


@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_trained_channel_changes_logits_only_once_a_state_exists(bb: Backbone) -> None:
    model = bb.build()
    relay = relaykit.attach(model, **bb.attach_kwargs)
    torch.nn.init.normal_(relay.channel.proj.weight)
    ids = torch.full((2, 6), bb.mask_id)
    with torch.no_grad():
        bare = logits_of(model(ids))
        first = relay(ids)  # state None: h = 0 and no relay term
        second = relay(ids, state=first.state)
    assert torch.equal(first.logits, bare)
    assert not torch.equal(second.logits, bare)
