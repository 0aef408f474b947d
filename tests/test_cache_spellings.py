"""Every spelling of the KV-cache argument (``cache=`` on transformers 5.x, ``past_key_values=``, positional),
chosen from the backbone's signature: relay places h after the cached prefix for each, the refusals
(``update="all"`` with a cache, a cache from another batch) hold for each, and relaykit's own cached decoding
raises no deprecation warning. Matrix: Qwen2 and Llama."""

from __future__ import annotations

import inspect
import logging
import warnings

import pytest
import torch
from tiny import tiny_llama_bidirectional, tiny_qwen2
from transformers import DynamicCache

import relaykit
from relaykit.cachearg import cache_argument, cache_parameter, output_cache

MASK = 47
BACKBONES = {"qwen2": tiny_qwen2, "llama": tiny_llama_bidirectional}


def declared(model: torch.nn.Module) -> str:
    return cache_parameter(model)  # "cache" on transformers 5.x, "past_key_values" on 4.x


def spellings(model: torch.nn.Module) -> list[str]:
    """The keyword spellings this transformers accepts: both on 5.x (past_key_values deprecated), one on 4.x."""
    return ["cache", "past_key_values"] if declared(model) == "cache" else ["past_key_values"]


def prefix_cache(model: torch.nn.Module, ids: torch.Tensor) -> object:
    with torch.no_grad():
        return output_cache(model(ids, use_cache=True))


@pytest.fixture(params=list(BACKBONES), ids=str)
def relay(request: pytest.FixtureRequest) -> relaykit.RelayModel:
    relay = relaykit.attach(BACKBONES[request.param](), mask_token_id=MASK)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        relay.channel.proj.weight.copy_(torch.randn(relay.channel.proj.weight.shape, generator=g) * 0.5)
    return relay


def test_every_spelling_places_the_call_after_the_cached_prefix(relay: relaykit.RelayModel) -> None:
    model = relay.backbone
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    ids[:, 5:] = MASK
    outs = {}
    for name in spellings(model):
        out = relay(ids[:, 4:], **{name: prefix_cache(model, ids[:, :4]), "use_cache": True})
        assert out.positions[0].tolist() == [4, 5, 6], name
        outs[name] = out
    with relay.session() as session:  # a third-party loop passing the cache positionally
        params = [p for p in inspect.signature(model.forward).parameters if p != "self"]
        index = params.index(declared(model))
        args = [ids[:, 4:], *([None] * (index - 1)), prefix_cache(model, ids[:, :4])]
        model(*args, use_cache=True)
        assert session.state is not None and session.state.filled[:, 5:].all()
        assert not bool(session.state.filled[:, :5].any())  # h only at the fed masked positions 5, 6
    first = next(iter(outs.values()))
    for out in outs.values():
        assert torch.equal(out.logits, first.logits) and torch.equal(out.state.hidden, first.state.hidden)


def test_refusals_hold_for_every_spelling(relay: relaykit.RelayModel) -> None:
    model = relay.backbone
    ids = torch.full((2, 3), MASK)
    for name in spellings(model):
        with pytest.raises(ValueError, match="update='all'"):
            relay(ids, update="all", **{name: DynamicCache(), "use_cache": True})
        one_row = prefix_cache(model, torch.randint(0, 40, (1, 4)))
        with pytest.raises(ValueError, match="holds 1 rows but the input has 2"):
            relay(ids, **{name: one_row, "use_cache": True})
    params = [p for p in inspect.signature(model.forward).parameters if p != "self"]
    index = params.index(declared(model))
    with relay.session(update="all"), pytest.raises(ValueError, match="update='all'"):
        model(ids, *([None] * (index - 1)), DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="passes a KV cache twice"):
        cache_argument(model, (), {"cache": DynamicCache(), "past_key_values": DynamicCache()})


def test_cached_generate_passes_the_declared_name_without_deprecation_warnings(relay: relaykit.RelayModel) -> None:
    logging.Logger.warning_once.cache_clear()  # transformers logs its deprecations once per process
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(handler)
    passed: list[set[str]] = []
    hook = relay.backbone.register_forward_pre_hook(lambda m, a, kw: passed.append(set(kw)), with_kwargs=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(0))
            res = relaykit.generate(relay, prompt, max_new_tokens=8, block_size=4, use_cache=True,
                                    attention="block_causal")  # fmt: skip
    finally:
        hook.remove()
        logging.getLogger("transformers").removeHandler(handler)
    assert not bool((res.sequences == MASK).any())
    assert any(declared(relay.backbone) in kw for kw in passed)
    assert not any("past_key_values" in kw for kw in passed) or declared(relay.backbone) == "past_key_values"
    messages = [str(w.message) for w in caught] + seen
    assert not [m for m in messages if "deprecated" in m.lower()], messages


def test_cache_keyword_refused_where_the_backbone_only_takes_past_key_values() -> None:
    class OldStyle(torch.nn.Module):  # transformers 4.x / remote code: past_key_values, and **kwargs
        def forward(self, input_ids, attention_mask=None, past_key_values=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
            return input_ids

    old = OldStyle()
    assert cache_parameter(old) == "past_key_values"
    assert cache_argument(old, (torch.zeros(1), None, "c"), {}) == "c"  # positional, at its declared index
    with pytest.raises(ValueError, match="pass past_key_values="):
        cache_argument(old, (), {"cache": DynamicCache()})


def test_where_a_forward_takes_its_cache_positionally_is_worked_out_per_forward_function() -> None:
    """cache_argument caches the cache's positional index by forward function: a class whose forward is replaced
    (another function) is asked afresh, and two classes with different signatures never share an answer."""

    class First(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):  # noqa: ANN001, ANN201
            return input_ids

    class Second(torch.nn.Module):
        def forward(self, input_ids, mask=None, cache=None):  # noqa: ANN001, ANN201
            return input_ids

    ids, cache = torch.zeros(1, 2), object()
    first, second = First(), Second()
    assert cache_argument(first, (ids, cache), {}) is cache
    assert cache_argument(second, (ids, None, cache), {}) is cache
    assert cache_argument(second, (ids, cache), {}) is None  # the second positional is the mask there
    assert cache_argument(first, (ids, cache), {}) is cache  # asked again: the cached answer holds

    def no_cache(self, input_ids, other=None):  # noqa: ANN001, ANN202
        return input_ids

    First.forward = no_cache  # a new forward function: its parameters are read afresh
    assert cache_argument(first, (ids, cache), {}) is None
