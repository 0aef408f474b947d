"""PersistentRollout implements Algorithm 1: per-sample (z, h, x0) carried across optimiser steps, finished rows
replaced in data order with z fully masked and h = 0, and a saved driver resumes exactly."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from rollout_util import batch, tiny_relay
from tiny import MASK_ID
from torch import nn

from relaykit import METHODS, PersistentRollout, RelayModel, RelayState
from relaykit.policies import Oracle, RandomK, TopK


class Spy(nn.Module):
    """Wraps a relay the way DDP does (``.module``) and records what every backbone call was fed."""

    def __init__(self, relay: RelayModel) -> None:
        super().__init__()
        self.module = relay
        self.calls: list[tuple[torch.Tensor, RelayState | None]] = []

    def forward(self, z: torch.Tensor, state: RelayState | None = None, **kwargs: Any) -> Any:
        self.calls.append((z.clone(), state))
        return self.module(z, state=state, **kwargs)


def samples(count: int, per_item: int, n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch(per_item, n, seed=seed + i, p_maskable=0.6) for i in range(count)]


def flat(data: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])


def test_algorithm_1_rows_carry_over_and_finished_rows_restart() -> None:
    relay = tiny_relay()
    spy = Spy(relay)
    data = samples(12, 3)  # batches of 3 for 4 rows: samples straddle data items
    all_x0, all_maskable = flat(data)
    driver = PersistentRollout(spy, data, batch_size=4, policy=TopK(2), k=2)
    prev = None
    for _ in range(8):
        spy.calls.clear()
        res = driver.step()
        z_in, state_in = spy.calls[0]
        assert len(spy.calls) == 2  # K forwards per optimiser step
        ids = res.sample_ids
        assert torch.equal(driver.x0, all_x0[ids])  # each row holds the sample it says, in data order
        for row in range(4):
            fresh = all_x0[ids[row]].masked_fill(all_maskable[ids[row]], MASK_ID)
            if bool(res.new_rows[row]):
                assert torch.equal(z_in[row], fresh)  # new sample: every maskable position masked
                assert state_in is None or (not bool(state_in.filled[row].any()) and not state_in.hidden[row].any())
                assert prev is None or bool(prev.finished[row])  # only finished rows are replaced
            else:
                assert torch.equal(z_in[row], prev.z[row])  # carried over from the previous window
                assert torch.equal(state_in.hidden[row], prev.state.hidden[row])  # h too
                assert not bool(prev.finished[row])
        new_ids = ids[res.new_rows].tolist()
        assert new_ids == sorted(new_ids) and len(set(ids.tolist())) == 4
        prev = res
    assert driver.completed > 0 and driver.samples_drawn == int(ids.max()) + 1


def test_method_presets() -> None:
    relay = tiny_relay()
    data = samples(10, 4)
    mlm = PersistentRollout(relay, data, method="mlm")
    for _ in range(2):
        res = mlm.step()
        assert bool(res.new_rows.all()) and res.k == 1 and res.state is None  # fresh samples, no relay
    assert mlm.samples_drawn == 8
    rollout = PersistentRollout(relay, data, method="rollout", policy=TopK(1))
    res = rollout.step()
    res = rollout.step()
    assert res.state is None and not bool(res.new_rows.any())  # z persists, no relay state
    sg = PersistentRollout(relay, data, method="relay_sg")
    assert sg.stop_gradient and sg.relay_enabled and sg.k == 2
    custom = PersistentRollout(relay, data, method="relay", k=3, stop_gradient=True)
    assert custom.k == 3 and custom.stop_gradient
    assert set(METHODS) == {"mlm", "rollout", "relay_sg", "relay"}


def test_refill_feeds_new_rows_and_discards_the_rest() -> None:
    relay = tiny_relay()
    pool = samples(3, 4)
    driver = PersistentRollout(relay, batch_size=4, policy=TopK(6), k=1)  # every row finishes every window
    for item in pool:
        res = driver.step(refill={"x0": item[0], "maskable": item[1]})
        assert torch.equal(driver.x0, item[0])
    half = PersistentRollout(relay, batch_size=2, policy=TopK(1))
    half.step(refill=pool[0])
    half.step(refill=pool[1])  # no row finished: the whole refill batch is unused
    assert half.discarded == 2 + 4 and res.sample_ids.tolist() == [8, 9, 10, 11]


def make_run(seed: int) -> tuple[RelayModel, torch.optim.Optimizer, PersistentRollout, list]:
    relay = tiny_relay(seed=seed, layers=1)
    opt = torch.optim.Adam(relay.parameters(), lr=1e-2)
    data = samples(20, 3)
    driver = PersistentRollout(relay, data, batch_size=4, policy=RandomK(fraction=0.3), seed=seed, loss="llada")
    return relay, opt, driver, data


def train(relay: RelayModel, opt: torch.optim.Optimizer, driver: PersistentRollout, steps: int) -> list[torch.Tensor]:
    losses = []
    for _ in range(steps):
        res = driver.step()
        res.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(res.step_losses.detach())
    return losses


@pytest.mark.parametrize("cut", [0, 3])
def test_resume_continues_exactly(cut: int) -> None:
    relay, opt, driver, _ = make_run(seed=0)
    straight = train(relay, opt, driver, 6)

    relay, opt, driver, _ = make_run(seed=0)
    first = train(relay, opt, driver, cut)
    buffer = io.BytesIO()
    torch.save({"driver": driver.state_dict(), "model": relay.state_dict(), "opt": opt.state_dict()}, buffer)
    del relay, opt, driver
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)

    relay2, opt2, driver2, data = make_run(seed=123)  # another seed: everything must come from the checkpoint
    relay2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    driver2.load_state_dict(ckpt["driver"], data=data)
    resumed = first + train(relay2, opt2, driver2, 6 - cut)

    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    relay_straight, opt_s, driver_s, _ = make_run(seed=0)
    train(relay_straight, opt_s, driver_s, 6)
    for (name, p), q in zip(relay_straight.named_parameters(), relay2.parameters()):
        assert torch.equal(p, q), name
    assert driver_s.state_dict()["counters"] == driver2.state_dict()["counters"]


def test_resume_refuses_another_configuration() -> None:
    relay, _, driver, data = make_run(seed=0)
    driver.step()
    other = PersistentRollout(relay, data, batch_size=4, method="relay_sg")
    with pytest.raises(ValueError, match=r"configured differently \(.*stop_gradient: saved False, this driver True"):
        other.load_state_dict(driver.state_dict())
    short = PersistentRollout(relay, data[:1], batch_size=4, policy=RandomK(fraction=0.3), loss="llada")
    short.load_state_dict(driver.state_dict())
    with pytest.raises(RuntimeError, match="resuming needs to skip 2 data items already read, but the data has only 1"):
        for _ in range(6):  # rows of 6 positions, >= 2 commits per window: a row needs a new sample by then
            short.step()


def test_a_per_sample_oracle_order_travels_with_its_sample() -> None:
    relay = tiny_relay()
    n = 6
    items = []
    for s in range(3):
        x0, _ = batch(2, n, seed=s)
        maskable = torch.ones(2, n, dtype=torch.bool)
        order = torch.stack([torch.arange(n), torch.arange(n).flip(0)]).float()  # left-to-right, right-to-left
        items.append({"x0": x0, "maskable": maskable, "order": order})
    driver = PersistentRollout(relay, items, policy=Oracle(torch.zeros(2, n), k=1), k=2)
    res = driver.step()
    unmasked = res.z != MASK_ID
    assert unmasked[0].tolist() == [True, True, False, False, False, False]
    assert unmasked[1].tolist() == [False, False, False, False, True, True]
    saved = driver.state_dict()
    assert torch.equal(saved["rows"]["order"], items[0]["order"])
    fresh = PersistentRollout(relay, items, policy=Oracle(torch.zeros(2, n), k=1), k=2)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.step().z, driver.step().z)
    mixed = PersistentRollout(relay, [items[0], batch(2, n)], policy=TopK(n), k=1)
    mixed.step()
    with pytest.raises(ValueError, match="either every sample carries an 'order' or none does"):
        mixed.step()
