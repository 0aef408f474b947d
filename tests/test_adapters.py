"""Every family adapter: detection, exact module resolution, mask ids, and contracts 1, 6 and 7 on its twin."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from backbones import FAMILIES, Backbone, logits_of, random_ids, randomise_channel
from hypothesis import given
from hypothesis import strategies as st
from test_detach import snapshot

import relaykit
from relaykit import RelayModel, RelayState
from relaykit.adapters import LLaDAAdapter, MDLMAdapter, adapter_from_config, detect_adapter, get_adapter
from relaykit.testing.twins.llada import tiny_llada


@pytest.mark.parametrize("family", FAMILIES, ids=repr)
def test_attach_detects_the_family_and_says_so(family: Backbone, caplog: pytest.LogCaptureFixture) -> None:
    model = family.build()
    assert detect_adapter(model) == family.adapter
    with caplog.at_level(logging.INFO, logger="relaykit"):
        relay = relaykit.attach(model, **family.attach_kwargs)
    assert relay.adapter.name == family.adapter and relay.mask_token_id == family.mask_id
    assert f"detected adapter {family.adapter!r} for {type(model).__name__}" in caplog.text


def test_generic_models_are_not_claimed_by_a_family() -> None:
    from tiny import TinyMDM, tiny_qwen2

    assert detect_adapter(TinyMDM()) == "generic" and detect_adapter(tiny_qwen2()) == "generic"


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llada_hooks_wte_and_ln_f_never_an_ff_out(tied: bool) -> None:
    model = tiny_llada(weight_tying=tied)
    adapter = LLaDAAdapter()
    assert adapter.embedding(model) is model.model.transformer.wte
    final, side = adapter.final_hidden(model)
    assert final is model.model.transformer.ln_f and side == "output"
    assert adapter.tied(model) is tied
    bare_inner = adapter.embedding(model.model)  # the inner LLaDAModel resolves too
    assert bare_inner is model.model.transformer.wte
    relay = relaykit.attach(model)
    hooked = {n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}
    assert hooked == {"", "model.transformer.wte", "model.transformer.ln_f"}
    relay.detach()


def test_mask_ids_from_argument_config_or_published_default() -> None:
    model = tiny_llada()
    assert LLaDAAdapter().mask_token_id(model) == 63
    assert LLaDAAdapter(mask_token_id=5).mask_token_id(model) == 5
    del model.config.mask_token_id
    with pytest.raises(ValueError, match="126336"):
        LLaDAAdapter().mask_token_id(model)
    from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2

    with pytest.raises(ValueError, match="151665"):
        relaykit.attach(tiny_fast_dllm_v2())
    from relaykit.testing.twins.mdlm import tiny_dit

    assert MDLMAdapter().mask_token_id(tiny_dit(vocab=40)) == 39
    with pytest.raises(TypeError, match="mask_token_id"):
        get_adapter("mdlm", mask_token_id="47")


def test_family_adapters_refuse_models_of_another_layout() -> None:
    from tiny import TinyMDM

    with pytest.raises(AttributeError, match="model.transformer"):
        relaykit.attach(TinyMDM(), adapter="llada", mask_token_id=3)
    with pytest.raises(AttributeError, match="vocab_embed"):
        relaykit.attach(TinyMDM(), adapter="mdlm", mask_token_id=3)
    with pytest.raises(AttributeError, match="model.embed_tokens"):
        relaykit.attach(TinyMDM(), adapter="fast_dllm_v2", mask_token_id=3)


examples = st.tuples(st.integers(1, 2), st.integers(2, 8), st.integers(0, 2**16), st.floats(0, 1), st.booleans())


@pytest.mark.parametrize("family", FAMILIES, ids=repr)
def test_contract1_zero_initialised_relay_is_identity(family: Backbone) -> None:
    model = family.build()
    relay = relaykit.attach(model, **family.attach_kwargs)
    d = relay.channel.config.hidden_size

    @given(examples)
    def check(example: tuple) -> None:
        b, blocks, seed, frac, with_state = example
        n = min(4 * blocks, family.max_len)  # whole blocks of 4
        ids = random_ids(family, b, n, seed=seed, mask_fraction=frac)  # (b, n)
        state = None
        if with_state:
            g = torch.Generator().manual_seed(seed)
            state = RelayState(torch.randn(b, ids.shape[1], d, generator=g) * 10, torch.rand(b, ids.shape[1]) < 0.7)
        with torch.no_grad():
            bare = logits_of(model(ids, **family.call_kwargs(b)))
            out = relay(ids, state=state, **family.call_kwargs(b))
        assert torch.equal(out.logits, bare)

    check()


@pytest.mark.parametrize("family", FAMILIES, ids=repr)
def test_contract6_detach_restores_the_twin(family: Backbone) -> None:
    model = family.build()
    before = snapshot(model)
    ids = random_ids(family, 2, 8, seed=1)
    with torch.no_grad():
        bare = logits_of(model(ids, **family.call_kwargs(2)))
    relay = relaykit.attach(model, kind="mlp", **family.attach_kwargs)
    randomise_channel(relay)
    with torch.no_grad():
        first = relay(ids, **family.call_kwargs(2))
        relay(ids, state=first.state, **family.call_kwargs(2))
    relay.detach()
    after = snapshot(model)
    assert after["modules"] == before["modules"] and after["hooks"] == before["hooks"]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())  # type: ignore[index,union-attr]
    with torch.no_grad():
        assert torch.equal(logits_of(model(ids, **family.call_kwargs(2))), bare)


@pytest.mark.parametrize("family", FAMILIES, ids=repr)
def test_contract7_round_trip_rebuilds_the_family_adapter(family: Backbone, tmp_path: Path) -> None:
    relay = relaykit.attach(family.build(), **family.attach_kwargs)
    randomise_channel(relay)
    relay.save_pretrained(tmp_path)
    loaded = RelayModel.from_pretrained(family.build(), tmp_path)
    assert loaded.adapter.name == family.adapter and loaded.mask_token_id == family.mask_id
    assert adapter_from_config(relay.adapter.to_config()).to_config() == relay.adapter.to_config()
    ids = random_ids(family, 2, 8, seed=2)
    with torch.no_grad():
        a, b = relay(ids, **family.call_kwargs(2)), loaded(ids, **family.call_kwargs(2))
        assert torch.equal(
            relay(ids, state=a.state, **family.call_kwargs(2)).logits,
            loaded(ids, state=b.state, **family.call_kwargs(2)).logits,
        )


def test_family_and_generic_adapters_read_the_same_config_mask_id() -> None:
    from relaykit.adapters import get_adapter
    from relaykit.testing.twins.llada import tiny_llada

    model = tiny_llada()
    for name in ("mask_token_id", "mask_index"):
        if hasattr(model.config, name):
            delattr(model.config, name)
    model.config.mask_id = 5
    assert get_adapter("llada").mask_token_id(model) == 5
    assert get_adapter("generic").mask_token_id(model) == 5
