"""RelayConfig: typed, validated on load with errors that name the field, the expected type and the value found;
mask-id override on load; the model card; clear errors for folders that do not exist."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from backbones import BACKBONES
from huggingface_hub import ModelCard
from tiny import TinyMDM

import relaykit
from relaykit import RelayModel
from relaykit.config import FORMAT_VERSION, RelayConfig
from relaykit.io import CARD_NAME, CONFIG_NAME

BB = BACKBONES[0]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    relay = relaykit.attach(BB.build(), **BB.attach_kwargs)
    relay.save_pretrained(tmp_path / "relay")
    return tmp_path / "relay"


def rewrite(folder: Path, edit: Any) -> None:
    data = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps(edit(data)))


def test_relay_config_is_typed_and_round_trips(saved: Path) -> None:
    relay = RelayModel.from_pretrained(BB.build(), saved)
    config = relay.config
    assert isinstance(config, RelayConfig) and config.mask_token_id == BB.mask_id and config.update == "masked"
    assert config.channel == relay.channel.config and config.adapter["name"] == "generic"
    assert RelayConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: 123, r"must hold a JSON object with the relay settings, got int 123"),
        (lambda d: {**d, "format_version": "1"}, r"field 'format_version' expected an int in 1\.\.2, got str '1'"),
        (lambda d: {**d, "format_version": 0}, r"field 'format_version' expected an int in 1\.\.2, got int 0"),
        (lambda d: {**d, "format_version": -5}, r"field 'format_version' expected an int in 1\.\.2, got int -5"),
        (lambda d: {**d, "format_version": True}, r"field 'format_version' expected an int in 1\.\.2, got bool True"),
        (lambda d: {**d, "format_version": 9}, r"'format_version' is 9 but this relaykit .* reads formats 1\.\.2"),
        (lambda d: {**d, "adapter": "generic"}, r"field 'adapter' expected an object with a string 'name'.*str 'gen"),
        (lambda d: {**d, "mask_token_id": "31"}, r"field 'mask_token_id' expected an int >= 0, got str '31'"),
        (lambda d: {**d, "update": "some"}, r"field 'update' expected one of \('masked', 'all'\), got str 'some'"),
        (lambda d: {**d, "channel": [16]}, r"field 'channel' expected an object of ChannelConfig fields, got list"),
        (
            lambda d: {**d, "channel": {**d["channel"], "hidden_size": 16.0}},
            r"field 'channel\.hidden_size' expected an int >= 1, got float 16\.0",
        ),
        (
            lambda d: {**d, "channel": {**d["channel"], "kind": "conv"}},
            r"field 'channel\.kind' expected one of \('linear', 'mlp', 'gated'\), got str 'conv'",
        ),
        (lambda d: {k: v for k, v in d.items() if k != "channel"}, r"lacks required field\(s\) \['channel'\]"),
        (lambda d: {**d, "files": "README.md"}, r"field 'files' expected a list of file names, got str"),
    ],
)
def test_bad_config_names_field_expected_and_found(saved: Path, edit: Any, message: str) -> None:
    rewrite(saved, edit)
    with pytest.raises(ValueError, match=message) as info:
        RelayModel.from_pretrained(BB.build(), saved)
    assert CONFIG_NAME in str(info.value)  # the file is named too


def test_truncated_config_is_reported_as_damaged(saved: Path) -> None:
    text = (saved / CONFIG_NAME).read_text()
    (saved / CONFIG_NAME).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"relay_config\.json is not valid JSON .* damaged: save the relay again"):
        RelayModel.from_pretrained(BB.build(), saved)


def test_unknown_config_field_warns(saved: Path) -> None:
    rewrite(saved, lambda d: {**d, "colour": "blue"})
    with pytest.warns(UserWarning, match=r"ignoring unknown field\(s\) \['colour'\]"):
        RelayModel.from_pretrained(BB.build(), saved)


def test_format_1_folders_still_load(saved: Path) -> None:
    rewrite(
        saved,
        lambda d: (
            {k: v for k, v in d.items() if k not in ("files", "backbone_weights", "vocab_size")} | {"format_version": 1}
        ),
    )
    assert RelayModel.from_pretrained(BB.build(), saved).config.format_version == FORMAT_VERSION


def test_mask_id_override_and_vocabulary_checks(tmp_path: Path) -> None:
    kwargs = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm"}
    relaykit.attach(TinyMDM(vocab=32), mask_token_id=31, **kwargs).save_pretrained(tmp_path / "v32")
    big = TinyMDM(vocab=64)
    warning = r"saved with mask_token_id 31 for a vocabulary of 32 tokens; this backbone has 64 tokens; keeping 31 "
    with pytest.warns(UserWarning, match=warning + r"\(pass mask_token_id=\.\.\. to from_pretrained"):
        kept = RelayModel.from_pretrained(big, tmp_path / "v32")
    assert kept.mask_token_id == 31
    kept.detach()
    assert RelayModel.from_pretrained(big, tmp_path / "v32", mask_token_id=63).mask_token_id == 63
    wide = relaykit.attach(TinyMDM(vocab=64), mask_token_id=63, **kwargs)
    wide.save_pretrained(tmp_path / "v64")
    with pytest.raises(ValueError, match=r"saved mask_token_id 63 is outside this backbone's vocabulary of 32 tokens"):
        RelayModel.from_pretrained(TinyMDM(vocab=32), tmp_path / "v64")
    with pytest.raises(ValueError, match=r"mask_token_id=40 is outside this backbone's vocabulary of 32 tokens"):
        RelayModel.from_pretrained(TinyMDM(vocab=32), tmp_path / "v64", mask_token_id=40)
    assert RelayModel.from_pretrained(TinyMDM(vocab=32), tmp_path / "v64", mask_token_id=31).mask_token_id == 31


def test_model_card(tmp_path: Path) -> None:
    qwen = BACKBONES[1].build()
    qwen.config._name_or_path = "Efficient-Large-Model/Fast_dLLM_v2_1.5B"
    relay = relaykit.attach(qwen, kind="mlp")
    with torch.no_grad():
        qwen.lm_head.weight.add_(1.0)  # type: ignore[union-attr]
    relay.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / CARD_NAME)
    assert card.data.base_model == "Efficient-Large-Model/Fast_dLLM_v2_1.5B"
    assert card.data.library_name == "relaykit" and "relaykit" in card.data.tags
    text = card.text
    assert f"relaykit version: {relaykit.__version__}" in text and "channel: `mlp`" in text
    assert "mask token id: 47" in text and "Qwen2ForCausalLM.from_pretrained" in text


def test_push_to_hub_uploads_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi

    uploaded: dict[str, Any] = {}

    def upload_folder(self: HfApi, *, repo_id: str, folder_path: Path, **kwargs: Any) -> str:
        uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        uploaded["card"] = (Path(folder_path) / CARD_NAME).read_text()
        return "ok"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    relay = relaykit.attach(BB.build(), **BB.attach_kwargs)
    assert relay.push_to_hub("me/relay") == "ok"
    assert uploaded["files"] == [CARD_NAME, CONFIG_NAME, "relay_model.safetensors"]
    assert "from_pretrained(backbone, 'me/relay')" in uploaded["card"]


def test_misspelt_local_folder_fails_at_once(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"no relay folder at .*relai.*similar name.*\['relay'\]"):
        RelayModel.from_pretrained(BB.build(), str(saved.parent / "relai"))
    monkeypatch.chdir(saved.parent.parent)
    relative = f"{saved.parent.name}/relai"  # reads like 'owner/name' but its first part is a local folder
    with pytest.raises(FileNotFoundError, match=r"no relay folder at .*relai"):
        RelayModel.from_pretrained(BB.build(), relative)
    assert time.perf_counter() - start < 5  # no Hub retries
    with pytest.raises(NotADirectoryError, match="is a file"):
        RelayModel.from_pretrained(BB.build(), saved / CONFIG_NAME)


def test_saving_onto_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    relay = relaykit.attach(BB.build(), **BB.attach_kwargs)
    with pytest.raises(FileExistsError, match=r"taken: it is a file, not a folder"):
        relay.save_pretrained(tmp_path / "taken")
