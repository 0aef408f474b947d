"""Contract 7: save -> load reproduces the channel exactly; a mismatched backbone fails naming both shapes.
Hub ids are resolved through huggingface_hub against a local cache in its own layout, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from backbones import GENERIC, Backbone
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayModel
from relaykit.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME


def trained_relay(bb: Backbone, **options: object) -> RelayModel:
    relay = relaykit.attach(bb.build(), **bb.attach_kwargs, **options)  # type: ignore[arg-type]
    torch.manual_seed(3)
    for p in relay.channel.parameters():
        torch.nn.init.normal_(p)
    return relay


@pytest.mark.parametrize("kind", ["linear", "mlp", "gated"])
@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_contract7_round_trip_is_exact(bb: Backbone, kind: str, tmp_path: Path) -> None:
    relay = trained_relay(bb, kind=kind, norm="rmsnorm")
    folder = tmp_path / "relay"
    relay.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]  # backbone unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["relay"]  # no staging folder left beside it
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 2 and config["relaykit_version"] == relaykit.__version__
    assert config["backbone_weights"] is None and config["files"] == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
    assert config["adapter"]["name"] == "generic" and config["channel"]["kind"] == kind
    loaded = RelayModel.from_pretrained(bb.build(), folder)
    assert loaded.config == relay.config
    assert loaded.channel.config == relay.channel.config and loaded.mask_token_id == relay.mask_token_id
    for (k1, v1), (k2, v2) in zip(relay.channel.state_dict().items(), loaded.channel.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.full((2, 6), bb.mask_id)
    with torch.no_grad():
        a, b = relay(ids), loaded(ids)
        assert torch.equal(relay(ids, state=a.state).logits, loaded(ids, state=b.state).logits)


def test_saved_keys_have_no_wrapper_prefix(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    relay = trained_relay(GENERIC[0])
    relay.save_pretrained(tmp_path)
    assert sorted(load_file(str(tmp_path / WEIGHTS_NAME))) == ["norm.bias", "norm.weight", "proj.bias", "proj.weight"]


def test_contract7_mismatched_backbone_names_both_shapes(tmp_path: Path) -> None:
    bb = GENERIC[0]
    trained_relay(bb).save_pretrained(tmp_path)
    wider = TinyMDM(width=24)
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(24, 24\)"):
        RelayModel.from_pretrained(wider, tmp_path)
    assert not hasattr(wider, "relay_channel")  # a failed load leaves the backbone untouched


def test_torn_save_is_detected(tmp_path: Path) -> None:
    bb = GENERIC[0]
    trained_relay(bb).save_pretrained(tmp_path)
    other = tmp_path / "other"
    relay2 = trained_relay(bb, kind="mlp")
    relay2.save_pretrained(other)
    shutil.copy(other / WEIGHTS_NAME, tmp_path / WEIGHTS_NAME)  # weights from another save
    with pytest.raises(ValueError, match="checksum"):
        RelayModel.from_pretrained(bb.build(), tmp_path)


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """Lay out ``folder`` as huggingface_hub's cache does: blobs by sha256, snapshots/<commit>/ links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        os.symlink(os.path.relpath(repo / "blobs" / digest, snap), snap / f.name)
    return commit


def test_from_pretrained_resolves_hub_id_offline(tmp_path: Path) -> None:
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests run with HF_HUB_OFFLINE=1 (set in conftest)"
    bb = GENERIC[0]
    relay = trained_relay(bb)
    relay.save_pretrained(tmp_path / "saved")
    _hub_cache(tmp_path / "cache", "someone/tiny-relay", tmp_path / "saved")
    loaded = RelayModel.from_pretrained(bb.build(), "someone/tiny-relay", cache_dir=tmp_path / "cache")
    for k, v in relay.channel.state_dict().items():
        assert torch.equal(v, loaded.channel.state_dict()[k])
    with pytest.raises(Exception, match="(?i)offline|cannot find|not.*found|local"):
        RelayModel.from_pretrained(bb.build(), "someone/not-cached", cache_dir=tmp_path / "cache")


def test_push_to_hub_fails_clearly_offline() -> None:
    relay = trained_relay(GENERIC[0])
    with pytest.raises(Exception, match="(?i)offline"):
        relay.push_to_hub("me/relay")


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
