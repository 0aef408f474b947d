"""Contract 6: after detach no hook, parameter or attribute of relaykit remains on the backbone."""

from __future__ import annotations

import pytest
import torch
from backbones import GENERIC, Backbone, logits_of
from torch import nn

import relaykit

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "modules": [(n, type(m), sorted(vars(m))) for n, m in model.named_modules()],
        "params": [(n, p) for n, p in model.named_parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [(n, h, len(getattr(m, h))) for n, m in model.named_modules() for h in HOOK_DICTS],
    }


@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_contract6_detach_restores_backbone_exactly(bb: Backbone) -> None:
    model = bb.build()
    before = snapshot(model)
    ids = torch.full((2, 5), bb.mask_id)
    ids[:, 0] = 1
    with torch.no_grad():
        bare = logits_of(model(ids))
    relay = relaykit.attach(model, kind="mlp", **bb.attach_kwargs)
    assert any("relay_channel" in n for n, _ in model.named_parameters())
    torch.nn.init.normal_(relay.channel.proj.weight)
    with torch.no_grad():
        relay(ids, state=relay(ids).state)
        with relay.session():
            model(ids)
            model(ids)
    assert relay.detach() is model
    relay.detach()  # idempotent
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert [n for n, _ in after["params"]] == [n for n, _ in before["params"]]  # type: ignore[union-attr]
    assert all(a is b for (_, a), (_, b) in zip(after["params"], before["params"]))  # type: ignore[arg-type]
    assert after["state"].keys() == before["state"].keys()  # type: ignore[union-attr]
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())  # type: ignore[index,union-attr]
    assert after["hooks"] == before["hooks"]
    assert not any("relay" in name for name in vars(model))
    with torch.no_grad():
        assert torch.equal(logits_of(model(ids)), bare)
    with pytest.raises(RuntimeError, match="detached"):
        relay(ids)
    relaykit.attach(model, **bb.attach_kwargs).detach()  # can be attached again after detach


def test_detach_during_failed_forward_leaves_no_state() -> None:
    bb = GENERIC[0]
    model = bb.build()
    relay = relaykit.attach(model, **bb.attach_kwargs)
    with pytest.raises(RuntimeError, match="size of tensor"):
        relay(torch.full((1, 100), 1))  # longer than the model's positional table: the backbone raises
    assert relay._slots == [] and relay._call is None  # nothing left active after the exception
    with torch.no_grad():
        assert relay(torch.full((1, 4), bb.mask_id)).state is not None
