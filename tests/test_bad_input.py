"""Bad input gets a clear error: the right type and a message saying what was expected and what came."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from backbones import BACKBONES
from tiny import MASK_ID, TinyMDM
from torch import nn

import relaykit
from relaykit import ChannelConfig, RelayModel, RelayState

GENERIC = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID}


@pytest.fixture
def model() -> TinyMDM:
    torch.manual_seed(0)
    return TinyMDM().eval()


@pytest.fixture
def relay(model: TinyMDM) -> RelayModel:
    return relaykit.attach(model, **GENERIC)


def test_missing_path_lists_closest_candidates(model: TinyMDM) -> None:
    with pytest.raises(AttributeError, match=r"no module at path 'encoder\.tok_embed'.*encoder\.tok_emb"):
        relaykit.attach(model, embedding="encoder.tok_embed", final_hidden="encoder.norm", mask_token_id=MASK_ID)


def test_embedding_of_the_wrong_kind(model: TinyMDM) -> None:
    with pytest.raises(TypeError, match=r"'encoder\.head' is a Linear; expected a token embedding"):
        relaykit.attach(model, embedding="encoder.head", final_hidden="encoder.norm", mask_token_id=MASK_ID)


def test_final_hidden_container_is_refused(model: TinyMDM) -> None:
    with pytest.raises(TypeError, match=r"'encoder\.blocks\.layers' is a ModuleList \(a container\)"):
        relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.blocks.layers", mask_token_id=0)


def test_bad_side_suffix(model: TinyMDM) -> None:
    with pytest.raises(ValueError, match="must be 'input' or 'output', got 'inptu'"):
        relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.head:inptu", mask_token_id=0)


def test_no_getters_and_no_paths_lists_candidates(model: TinyMDM) -> None:
    with pytest.raises(AttributeError, match=r"no get_input_embeddings\(\).*encoder\.tok_emb"):
        relaykit.attach(model, mask_token_id=MASK_ID)


def test_attaching_twice(relay: RelayModel, model: TinyMDM) -> None:
    with pytest.raises(RuntimeError, match="already has a relay attached"):
        relaykit.attach(model, **GENERIC)
    with pytest.raises(TypeError, match="got a RelayModel"):
        relaykit.attach(relay, **GENERIC)  # type: ignore[arg-type]


def test_unknown_mask_id(model: TinyMDM) -> None:
    with pytest.raises(ValueError, match=r"unknown mask token id.*pass mask_token_id"):
        relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm")


def test_mask_id_outside_vocabulary(model: TinyMDM) -> None:
    with pytest.raises(ValueError, match=r"mask_token_id 126336 is outside the embedding's vocabulary of 32 tokens"):
        relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=126336)


def test_unknown_channel_option(model: TinyMDM) -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['knd'\]; channel options are"):
        relaykit.attach(model, knd="mlp", **GENERIC)


def test_bad_channel_config() -> None:
    with pytest.raises(ValueError, match=r"kind must be one of \('linear', 'mlp', 'gated'\), got 'conv'"):
        ChannelConfig(hidden_size=8, kind="conv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        ChannelConfig(hidden_size=0)


def test_unknown_adapter_name(model: TinyMDM) -> None:
    with pytest.raises(ValueError, match=r"unknown adapter 'lada'; available: .*generic"):
        relaykit.attach(model, "lada")


def test_state_from_another_batch(relay: RelayModel) -> None:
    state = relay(torch.full((2, 5), MASK_ID)).state
    with pytest.raises(ValueError, match="batch of 2 rows but the input has 3"):
        relay(torch.full((3, 5), MASK_ID), state=state)


def test_state_of_another_dtype(relay: RelayModel) -> None:
    state = RelayState.zeros(1, 5, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="relay state holds torch.float64 but the new hidden states are torch.float32"):
        relay(torch.full((1, 5), MASK_ID), state=state)


def test_state_covering_other_positions(relay: RelayModel) -> None:
    state = RelayState.zeros(1, 10, 16).window(5, 10)
    with pytest.raises(ValueError, match=r"covers positions 5\.\.9 but the call feeds positions 0\.\.4"):
        relay(torch.full((1, 5), MASK_ID), state=state)


def test_input_ids_of_the_wrong_kind(relay: RelayModel) -> None:
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.float32"):
        relay(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"\(batch, length\) tensor of token ids; got \(5,\)"):
        relay(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="state must be a RelayState or None, got Tensor"):
        relay(torch.zeros(1, 5, dtype=torch.long), state=torch.zeros(1, 5, 16))  # type: ignore[arg-type]


def test_calling_forward_directly_inside_a_session(relay: RelayModel, model: TinyMDM) -> None:
    with relay.session(), pytest.raises(RuntimeError, match=r"call model\(\.\.\.\) rather than model\.forward"):
        model.forward(torch.full((1, 5), MASK_ID))


def test_sessions_do_not_nest(relay: RelayModel) -> None:
    with relay.session(), pytest.raises(RuntimeError, match="sessions do not nest"):
        with relay.session():
            pass


def test_update_all_is_refused_with_a_cache() -> None:
    from transformers import DynamicCache

    bb = BACKBONES[1]
    relay = relaykit.attach(bb.build(), update="all")
    with pytest.raises(ValueError, match="update='all' writes h at committed positions"):
        relay(torch.full((1, 4), bb.mask_id), past_key_values=DynamicCache(), use_cache=True)
    with pytest.raises(ValueError, match="update must be 'masked'"):
        relay(torch.full((1, 4), bb.mask_id), update="some")  # type: ignore[arg-type]


def test_loading_a_missing_or_broken_folder(tmp_path: Path, relay: RelayModel) -> None:
    with pytest.raises(FileNotFoundError, match=r"not a relay folder: no relay_config\.json"):
        RelayModel.from_pretrained(TinyMDM(), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no relay folder at .*x' \(nothing exists there\)"):
        RelayModel.from_pretrained(TinyMDM(), tmp_path / "nope" / "deeper" / "x")
    relay.save_pretrained(tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "relay_config.json").read_text())
    del cfg["channel"]
    (tmp_path / "r" / "relay_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['channel'\]"):
        RelayModel.from_pretrained(TinyMDM(), tmp_path / "r")


def test_relay_state_construction_errors() -> None:
    with pytest.raises(ValueError, match=r"\(batch, length, hidden\) tensor; got shape \(2, 3\)"):
        RelayState(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"filled has shape \(2, 4\) but hidden has \(batch, length\) = \(2, 3\)"):
        RelayState(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"window 2\.\.11 is not inside the state's positions 0\.\.9"):
        RelayState.zeros(1, 10, 4).window(2, 12)
    with pytest.raises(IndexError, match=r"rows \[5\] are outside the batch of 2"):
        RelayState.zeros(2, 3, 4).reset([5])


def test_no_embedding_call_is_reported(model: TinyMDM) -> None:
    class Wrapper(nn.Module):  # a backbone that skips the hooked embedding entirely
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner.encoder.head(torch.zeros(*input_ids.shape, 16))

    relay = relaykit.attach(
        Wrapper(), embedding="inner.encoder.tok_emb", final_hidden="inner.encoder.norm", mask_token_id=MASK_ID
    )
    with pytest.raises(RuntimeError, match="relay hooks did not see this forward"):
        relay(torch.full((1, 3), MASK_ID))
