"""Regression tests for defects found in review: row selection by mask, mask-id lookup, hidden_size round trip,
BD3-LM's module-held cache refusing update='all', and the ddpm_cache rule under explicit-state sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayModel, RelayState


def test_select_accepts_a_bool_row_mask() -> None:
    s = RelayState(torch.arange(3.0).view(3, 1, 1).expand(3, 2, 1).clone(), torch.ones(3, 2, dtype=torch.bool))
    assert s.select(torch.tensor([True, False, True])).hidden[:, 0, 0].tolist() == [0.0, 2.0]
    assert s.select([2]).hidden[:, 0, 0].tolist() == [2.0]
    with pytest.raises(ValueError, match=r"bool row mask must have shape \(3,\)"):
        s.select(torch.tensor([True, False]))
    with pytest.raises(IndexError, match=r"rows \[3\] are outside the batch of 3"):
        s.select([3])


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


class Opaque(torch.nn.Module):
    """A custom MDM whose final hidden module's width cannot be read (a TransformerEncoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyMDM()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        enc = self.inner.encoder
        return enc.head(enc.blocks(enc.tok_emb(ids)))


def test_explicit_hidden_size_round_trips_and_is_checked(tmp_path: Path) -> None:
    paths = {"embedding": "inner.encoder.tok_emb", "final_hidden": "inner.encoder.blocks", "mask_token_id": MASK_ID}
    with pytest.raises(TypeError, match="pass hidden_size"):
        relaykit.attach(Opaque(), **paths)
    relay = relaykit.attach(Opaque(), hidden_size=16, **paths)
    torch.nn.init.normal_(relay.channel.proj.weight)
    relay.save_pretrained(tmp_path)
    loaded = RelayModel.from_pretrained(Opaque(), tmp_path)
    assert torch.equal(loaded.channel.proj.weight, relay.channel.proj.weight)
    with pytest.raises(ValueError, match="hidden_size=24 but the backbone's final hidden state has width 16"):
        relaykit.attach(TinyMDM(), embedding="encoder.tok_emb", final_hidden="encoder.norm", hidden_size=24,
                        mask_token_id=MASK_ID)  # fmt: skip


def test_bd3lm_module_cache_refuses_update_all() -> None:
    from test_mdlm_loops import bd3_sample

    from relaykit.testing.twins.bd3lm import tiny_bd3lm

    model = tiny_bd3lm()
    relay = relaykit.attach(model, update="all")
    assert relay.adapter.name == "mdlm"
    with torch.no_grad(), relay.session(), pytest.raises(ValueError, match="update='all' writes h"):
        bd3_sample(model, kv_cache=True, relay=relay)
    for block in model.backbone.blocks:
        block.kv_cache = None  # drop the module-held cache, as the sampler's caller does
    with torch.no_grad(), relay.session():
        bd3_sample(model, kv_cache=False, relay=relay)  # cache-free sampling may use update='all'


def test_ddpm_cache_reuse_is_refused_between_explicit_calls() -> None:
    from relaykit.adapters import ddpm_cache_valid

    relay = relaykit.attach(TinyMDM(), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)
    x = torch.full((1, 4), MASK_ID)
    relay(x)  # explicit-state sampler: between calls no call or session is open
    assert not ddpm_cache_valid(x, x.clone(), relay=relay)
    with relay.disabled():
        assert ddpm_cache_valid(x, x.clone(), relay=relay)
    relay.detach()
    assert ddpm_cache_valid(x, x.clone(), relay=relay) and not ddpm_cache_valid(x, x + 1, relay=relay)


def test_prompt_cache_without_tail_is_refused_under_token_shift() -> None:
    import dataclasses

    from tiny import tiny_qwen2

    from relaykit.adapters import GenericAdapter
    from relaykit.policies import TopK

    relay = relaykit.attach(tiny_qwen2(), GenericAdapter(token_shift=1))
    kw = dict(block_size=4, attention="block_causal", policy=TopK(1), use_cache=True)
    prompt = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(0))
    first = relaykit.generate(relay, prompt, max_new_tokens=4, return_cache=True, **kw)
    assert first.cache is not None and first.cache.tail is not None
    tailless = dataclasses.replace(first.cache, tail=None)
    with pytest.raises(ValueError, match="PromptCache needs its tail"):
        relaykit.generate(relay, first.sequences, max_new_tokens=4, cache=tailless, **kw)


def test_generate_takes_wrappers_and_callable_policies_like_bptt_rollout() -> None:
    class Wrapper(torch.nn.Module):  # the shape of DDP / FSDP wrappers: the model under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    relay = relaykit.attach(TinyMDM(), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)

    def first_candidate(confidence: torch.Tensor, candidates: torch.Tensor, generator: object = None) -> torch.Tensor:
        return candidates & (candidates.cumsum(-1) == 1)  # leftmost masked position

    prompt = torch.randint(0, 30, (2, 3))
    res = relaykit.generate(Wrapper(relay), prompt, max_new_tokens=4, policy=first_candidate, return_trajectory=True)
    assert res.steps.tolist() == [4, 4] and res.order[0, 3:].tolist() == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="policy must be a relaykit.policies.Policy"):
        relaykit.generate(relay, prompt, max_new_tokens=4, policy=0.9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generate\(\) expects a RelayModel"):
        relaykit.generate(TinyMDM(), prompt, max_new_tokens=4)  # type: ignore[arg-type]


def test_llada_refuses_block_causal_decoding() -> None:
    from relaykit.testing.twins.llada import tiny_llada

    relay = relaykit.attach(tiny_llada())
    prompt = torch.randint(0, 20, (1, 4))
    with pytest.raises(ValueError, match="cannot decode with attention='block_causal'"):
        relaykit.generate(relay, prompt, max_new_tokens=4, block_size=2, attention="block_causal")
