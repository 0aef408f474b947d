"""A save replaces the previous one as a whole: a failure or a SIGKILL at any file operation leaves the old or the
new checkpoint loadable, never a mix, and a successful save leaves no temporary files.

Every file operation of a save goes through ``relaykit.atomic._op``; the tests count them, then fail (an exception)
or kill the process (SIGKILL in a forked child) at each one in turn, on both commit paths (the atomic directory
exchange and the rename-aside fallback).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from backbones import GENERIC

import relaykit
from relaykit import RelayModel, atomic

BB = GENERIC[0]  # the custom tiny MDM: no transformers import in forked children


def make_relay(seed: int) -> RelayModel:
    """A relay whose channel and backbone both differ from the fresh backbone (seeded)."""
    relay = relaykit.attach(BB.build(), **BB.attach_kwargs)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in relay.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return relay


IDS = torch.full((2, 6), BB.mask_id)


def logits(relay: RelayModel) -> torch.Tensor:
    with torch.no_grad():
        first = relay(IDS)
        return relay(IDS, state=first.state).logits


def which(folder: Path, old: torch.Tensor, new: torch.Tensor) -> str:
    """'old' or 'new': the checkpoint in ``folder`` loads and reproduces one of them exactly (else the test fails)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = logits(RelayModel.from_pretrained(BB.build(), folder))
    if torch.equal(got, old):
        return "old"
    assert torch.equal(got, new), "the folder loads, but as a mix of the two saves"
    return "new"


def strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def count_ops(save: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def counting(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        seen.append(what)
        return fn(*args)

    monkeypatch.setattr(atomic, "_op", counting)
    save()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_failure_at_every_file_operation(exchange: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_relay, new_relay = make_relay(1), make_relay(2)
    old, new = logits(old_relay), logits(new_relay)
    folder = tmp_path / "ckpt"
    if not exchange:
        monkeypatch.setattr(atomic, "_EXCHANGE", None)
    old_relay.save_pretrained(folder, max_shard_size="8KB")
    ops = count_ops(lambda: new_relay.save_pretrained(folder, max_shard_size="8KB"), monkeypatch)
    if not exchange:
        monkeypatch.setattr(atomic, "_EXCHANGE", None)
    assert len(ops) > 15 and any("model-00002" in op for op in ops), ops
    outcomes = []
    for i in range(len(ops) + 1):  # fail at each operation in turn, then once more with none failing
        old_relay.save_pretrained(folder, max_shard_size="8KB")
        calls = 0

        def failing(what: str, fn: Callable[..., Any], *args: Any, i: int = i) -> Any:
            nonlocal calls
            calls += 1
            if calls == i + 1:
                raise OSError(f"injected failure at {what}")
            return fn(*args)

        monkeypatch.setattr(atomic, "_op", failing)
        try:
            new_relay.save_pretrained(folder, max_shard_size="8KB")
            outcomes.append("saved")
        except OSError as e:
            assert "injected failure" in str(e)
            outcomes.append(which(folder, old, new))
        finally:
            monkeypatch.setattr(atomic, "_op", lambda what, fn, *args: fn(*args))
        assert strays(tmp_path) == [], f"temporary folders left after a failure at op {i}"
    assert outcomes[-1] == "saved" and "old" in outcomes
    new_relay.save_pretrained(folder)
    assert which(folder, old, new) == "new" and strays(tmp_path) == []


def _killed_save(folder: str, at: int, exchange: bool) -> None:
    """Child process: save a new relay over ``folder`` and SIGKILL itself at file operation number ``at``."""
    torch.set_num_threads(1)
    if not exchange:
        atomic._EXCHANGE = None
    calls = 0

    def killing(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args)

    atomic._op = killing
    make_relay(2).save_pretrained(folder, max_shard_size="8KB")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() to kill a saving child cheaply")
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_sigkill_at_every_file_operation(exchange: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_relay, new_relay = make_relay(1), make_relay(2)
    old, new = logits(old_relay), logits(new_relay)
    folder = tmp_path / "ckpt"
    old_relay.save_pretrained(folder, max_shard_size="8KB")
    if not exchange:
        monkeypatch.setattr(atomic, "_EXCHANGE", None)
    ops = count_ops(lambda: new_relay.save_pretrained(folder, max_shard_size="8KB"), monkeypatch)
    ctx = multiprocessing.get_context("fork")
    seen = set()
    for at in range(1, len(ops) + 1):
        old_relay.save_pretrained(folder, max_shard_size="8KB")
        child = ctx.Process(target=_killed_save, args=(str(folder), at, exchange))
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL, f"the child was to be killed at op {at} ({ops[at - 1]})"
        seen.add(which(folder, old, new))  # loading also puts back a folder set aside by the killed save
    assert seen <= {"old", "new"} and "old" in seen
    new_relay.save_pretrained(folder)  # a successful save removes what the killed ones left
    assert which(folder, old, new) == "new" and strays(tmp_path) == []
