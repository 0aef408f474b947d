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
    from twins.llada import tiny_llada

    from relaykit.adapters import get_adapter

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
    from twins.bd3lm import tiny_bd3lm

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
