"""The relay term at state-less positions (``attach(..., empty="zero")``: Algorithm 1's h_0 = 0, R(0) added
everywhere) and Algorithm 1 as printed (``update="all"`` with ``empty="zero"``): identity at attach stays exact,
R(0) is added exactly where no state exists, caches are refused, the option round-trips through save/load, and
``empty="skip"`` (the default) is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbones import BACKBONES, GENERIC, Backbone, logits_of
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayState

ATTACH = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID}


def _manual(model: TinyMDM, ids: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Logits of the tiny MDM with ``delta`` (b, n, d) added to its token embeddings, computed by hand."""
    enc = model.encoder
    x = enc.tok_emb(ids) + delta + enc.pos_emb[: ids.shape[1]]  # (b, n, d)
    return enc.head(enc.norm(enc.blocks(x)))  # (b, n, V)


@pytest.mark.parametrize("update", ["masked", "all"])
@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_empty_zero_is_identity_at_attach(bb: Backbone, update: str) -> None:
    model = bb.build()
    relay = relaykit.attach(model, update=update, empty="zero", **bb.attach_kwargs)  # type: ignore[arg-type]
    d = relay.channel.config.hidden_size

    @settings(max_examples=6, deadline=None)
    @given(st.integers(1, 3), st.integers(1, 10), st.integers(0, 2**16), st.booleans())
    def check(b: int, n: int, seed: int, with_state: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, bb.vocab - 1, (b, n), generator=g)
        ids[torch.rand(b, n, generator=g) < 0.5] = bb.mask_id
        state = None
        if with_state:
            state = RelayState(torch.randn(b, n, d, generator=g), torch.rand(b, n, generator=g) < 0.5)
        with torch.no_grad():
            bare = logits_of(model(ids))
            out = relay(ids, state=state)
        assert torch.equal(out.logits, bare)

    check()


def test_empty_zero_adds_r0_exactly_where_no_state_exists() -> None:
    torch.manual_seed(0)
    model = TinyMDM()
    relay = relaykit.attach(model, empty="zero", **ATTACH)
    torch.nn.init.normal_(relay.channel.proj.weight)
    torch.nn.init.normal_(relay.channel.proj.bias)
    torch.nn.init.normal_(relay.channel.norm.bias)  # LayerNorm(0) = its bias, so R(0) = W beta + b != 0
    ids = torch.tensor([[3, MASK_ID, 5, MASK_ID], [MASK_ID, MASK_ID, 1, 2]])  # (2, 4)
    d = relay.channel.config.hidden_size
    r0 = relay.channel(torch.zeros(1, 1, d))  # (1, 1, d)
    with torch.no_grad():
        first = relay(ids)  # no state: R(0) at every position
        assert torch.allclose(first.logits, _manual(model, ids, r0.expand(2, 4, d)), atol=1e-6)
        hidden = torch.randn(2, 4, d)
        filled = torch.tensor([[True, False, False, True], [False, True, True, False]])
        second = relay(ids, state=RelayState(hidden, filled))
        delta = torch.where(filled.unsqueeze(-1), relay.channel(hidden), r0)  # (2, 4, d)
        assert torch.allclose(second.logits, _manual(model, ids, delta), atol=1e-6)
        with relay.disabled():  # the h-zeroed ablation stays the bare model (no R(0) either)
            assert torch.equal(relay(ids).logits, logits_of(model(ids)))


def test_empty_skip_is_unchanged_and_the_default() -> None:
    torch.manual_seed(0)
    model = TinyMDM()
    relay = relaykit.attach(model, **ATTACH)
    assert relay.empty == "skip"
    torch.nn.init.normal_(relay.channel.proj.bias)
    ids = torch.full((2, 5), MASK_ID)
    with torch.no_grad():
        assert torch.equal(relay(ids).logits, logits_of(model(ids)))  # no state: nothing added


def test_update_all_with_empty_zero_writes_h_everywhere_and_changes_givens() -> None:
    torch.manual_seed(0)
    model = TinyMDM()
    relay = relaykit.attach(model, update="all", empty="zero", **ATTACH)
    ids = torch.tensor([[3, MASK_ID, 5, MASK_ID]])
    with torch.no_grad():
        out = relay(ids)
    assert out.state is not None and bool(out.state.filled.all())  # Algorithm 1 as printed: h at every position


def test_empty_zero_is_refused_with_a_cache_and_bad_values_are_named() -> None:
    from transformers import DynamicCache

    bb = BACKBONES[1]
    relay = relaykit.attach(bb.build(), empty="zero")
    with pytest.raises(ValueError, match="empty='zero' adds R\\(0\\)"):
        relay(torch.full((1, 4), bb.mask_id), past_key_values=DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="empty must be 'skip'.*got 'none'"):
        relaykit.attach(TinyMDM(), empty="none", **ATTACH)  # type: ignore[arg-type]


def test_empty_round_trips_through_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    relay = relaykit.attach(TinyMDM(), empty="zero", update="all", **ATTACH)
    torch.nn.init.normal_(relay.channel.proj.bias)
    relay.save_pretrained(tmp_path)
    fresh = TinyMDM()
    fresh.load_state_dict(relay.detach().state_dict())
    loaded = relaykit.RelayModel.from_pretrained(fresh, tmp_path)
    assert (loaded.empty, loaded.update) == ("zero", "all")
    ids = torch.full((1, 4), MASK_ID)
    relay2 = relaykit.attach(TinyMDM(), **ATTACH)  # a default attach adds nothing without a state
    with torch.no_grad():
        assert not torch.equal(loaded(ids).logits, logits_of(fresh(ids)))
        assert torch.equal(relay2(ids).logits, logits_of(relay2.backbone(ids)))
