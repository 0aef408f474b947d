"""relaykit 0.1's six per-call adapter methods, deprecated for one release (relaykit/legacy.py): the aliases answer
from ``plan_call`` with a DeprecationWarning naming it; an old-style subclass keeps working through
``Adapter.plan_call`` (warned when defined); overrides that would be ignored are refused when the class is
defined; a ``bind`` returning None is warned and replaced by the default Binding."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
import torch
from tiny import MASK_ID, TinyMDM
from torch import Tensor, nn

import relaykit
from relaykit import RelayState
from relaykit.adapter import Adapter, Binding, CallPlan
from relaykit.adapters import GenericAdapter, LLaDAAdapter, MDLMAdapter
from relaykit.testing.twins.bd3lm import tiny_bd3lm

IDS = torch.tensor([[5, MASK_ID, MASK_ID, 7], [1, 2, 3, 4]])  # (2, 4): row 1 feeds no mask token
KV = [(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4))]  # a list cache holding 3 positions of 2 rows


def _generic() -> GenericAdapter:
    return GenericAdapter("encoder.tok_emb", "encoder.norm")


def _plan(adapter: Adapter, model: nn.Module, ids: Tensor, kwargs: dict[str, Any], mask: int = MASK_ID) -> CallPlan:
    return adapter.plan_call(adapter.bind(model), ids, (), kwargs, mask_token_id=mask)


def test_aliases_answer_from_plan_call_and_warn_naming_it() -> None:
    adapter, model = _generic(), TinyMDM()
    for kwargs in ({}, {"past_key_values": KV}, {"position_ids": torch.tensor([4, 5, 6, 7])}):
        plan = _plan(adapter, model, IDS, kwargs)
        with pytest.warns(DeprecationWarning, match=r"call_positions.*plan_call.*\.positions"):
            assert torch.equal(adapter.call_positions(IDS, (), kwargs), plan.positions)
        with pytest.warns(DeprecationWarning, match=r"bare_positions.*plan_call.*\.bare"):
            bare = adapter.bare_positions(IDS, plan.positions, (), kwargs, mask_token_id=MASK_ID)
        assert torch.equal(bare, plan.bare) and bare.tolist() == [[False] * 4, [True] * 4]
        with pytest.warns(DeprecationWarning, match=r"relay_columns.*plan_call.*\.columns"):
            assert adapter.relay_columns(IDS, (), kwargs) is None
        with pytest.warns(DeprecationWarning, match=r"cache_of.*plan_call.*\.cache"):
            assert adapter.cache_of(kwargs) is plan.cache
        with pytest.warns(DeprecationWarning, match=r"uses_cache.*plan_call.*\.uses_cache"):
            assert adapter.uses_cache(kwargs) is plan.uses_cache
    with pytest.warns(DeprecationWarning, match=r"embedding_input_ids.*removed"):
        assert adapter.embedding_input_ids((IDS,), {}) is IDS
    assert adapter.call_positions.__doc__ is not None  # the aliases stay documented
    with pytest.warns(DeprecationWarning):
        assert adapter.call_positions(IDS, (), {"past_key_values": KV}).tolist() == [[3, 4, 5, 6]] * 2


def test_aliases_on_a_family_use_its_binding_when_given_the_model() -> None:
    model, adapter = tiny_bd3lm(), MDLMAdapter()
    ids = torch.full((1, 32), 47)  # BD3-LM's [x_t ; x_0] training input: relay on the noisy half
    with pytest.warns(DeprecationWarning):
        assert adapter.relay_columns(ids, (), {}, model=model) == slice(0, 16)
    with pytest.warns(DeprecationWarning):
        assert adapter.call_positions(ids, (), {}, model=model).tolist() == [list(range(16))]
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="MDLMBinding"):
        adapter.relay_columns(ids, (), {})  # the plan needs the model's binding
    replace = torch.zeros(1, 8, dtype=torch.bool)
    replace[:, 4:6] = True
    llada = LLaDAAdapter(mask_token_id=MASK_ID)
    with pytest.warns(DeprecationWarning):  # Fast-dLLM v1's dual cache: the True columns of replace_position
        assert llada.call_positions(IDS[:1, :2], (), {"replace_position": replace}).tolist() == [[4, 5]]


with pytest.warns(DeprecationWarning, match="_HalfRelay overrides"):  # defining an old-style adapter warns

    class _HalfRelay(GenericAdapter):
        """0.1 style: relay on the first half of each call, a row relay-free when its first token is 5."""

        def relay_columns(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> slice | None:
            return slice(0, input_ids.shape[1] // 2)

        def bare_positions(
            self,
            input_ids: Tensor,
            positions: Tensor,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            *,
            mask_token_id: int,
        ) -> Tensor:
            return (input_ids[:, :1] == 5).expand_as(input_ids)

        def call_positions(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
            return super().call_positions(input_ids, args, kwargs) + 0 * len(self.cache_of(kwargs) or ())


class _HalfRelayNew(GenericAdapter):
    """The same adapter written with plan_call."""

    def plan_call(
        self, binding: Binding, ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any], *, mask_token_id: int
    ) -> CallPlan:
        plan = super().plan_call(binding, ids, args, kwargs, mask_token_id=mask_token_id)
        half = ids.shape[1] // 2
        bare = (ids[:, :1] == 5).expand(-1, half)
        positions = plan.positions[:, :half]  # (b, q / 2)
        return dataclasses.replace(plan, positions=positions, bare=bare, columns=slice(0, half), span=None)


def test_old_style_subclass_warns_when_defined_and_relays_as_its_plan_call_twin() -> None:
    warned = r"Old overrides call_positions, relay_columns, bare_positions.*override plan_call"
    with pytest.warns(DeprecationWarning, match=warned):

        class Old(_HalfRelay):
            pass

    outputs = []
    for adapter in (Old("encoder.tok_emb", "encoder.norm"), _HalfRelayNew("encoder.tok_emb", "encoder.norm")):
        torch.manual_seed(0)
        model = TinyMDM()
        relay = relaykit.attach(model, adapter=adapter, mask_token_id=MASK_ID)
        torch.nn.init.normal_(relay.channel.proj.weight)  # a channel that changes the logits
        ids = torch.tensor([[MASK_ID] * 6, [5] + [MASK_ID] * 5])  # (2, 6)
        state = RelayState.zeros(2, 6, 16).write(torch.arange(6).expand(2, 6), torch.randn(2, 6, 16))
        with pytest.warns(DeprecationWarning) if adapter.__class__ is Old else contextlib.nullcontext():
            outputs.append(relay(ids, state=state))
    old, new = outputs
    assert torch.equal(old.logits, new.logits) and torch.equal(old.state.hidden, new.state.hidden)
    assert old.positions.tolist() == [[0, 1, 2]] * 2  # only the first half took part in relay
    assert torch.equal(old.state.hidden[:, 3:], state.hidden[:, 3:])  # the other half kept its h


def test_overrides_that_would_be_ignored_are_refused_when_defined() -> None:
    with pytest.raises(TypeError, match=r"MyLLaDA overrides call_positions.*LLaDAAdapter\.plan_call.*ignored"):

        class MyLLaDA(LLaDAAdapter):
            def call_positions(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
                return input_ids * 0

    with pytest.raises(TypeError, match=r"embedding_input_ids.*first positional argument"):

        class Ids(GenericAdapter):
            def embedding_input_ids(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
                return args[0]


def test_a_class_that_defines_plan_call_beside_old_methods_is_not_warned() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Both(_HalfRelayNew):  # supports 0.1 and now: plan_call decides
            def relay_columns(self, input_ids: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> slice | None:
                return None

            plan_call = _HalfRelayNew.plan_call

    assert Both._legacy_overrides == ()


def test_bind_returning_none_is_deprecated_and_anything_else_refused() -> None:
    class OldBind(GenericAdapter):
        def bind(self, model: nn.Module) -> None:  # type: ignore[override]
            self.model = model  # 0.1: per-model state on the adapter

    model = TinyMDM()
    with pytest.warns(DeprecationWarning, match=r"OldBind.bind\(model\) returned None.*Binding"):
        relay = relaykit.attach(model, adapter=OldBind("encoder.tok_emb", "encoder.norm"), mask_token_id=MASK_ID)
    ids = torch.full((1, 4), MASK_ID)
    assert relay(ids).state.filled.all()  # the default binding's hooks work

    class BadBind(GenericAdapter):
        def bind(self, model: nn.Module) -> nn.Module:  # type: ignore[override]
            return model

    with pytest.raises(TypeError, match=r"BadBind.bind\(model\) must return a relaykit.plan.Binding, got TinyMDM"):
        relaykit.attach(TinyMDM(), adapter=BadBind("encoder.tok_emb", "encoder.norm"), mask_token_id=MASK_ID)
