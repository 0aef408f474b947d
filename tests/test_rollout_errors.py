"""Bad input to rollouts and the driver: a clear error (what was expected, what came), never a hang."""

from __future__ import annotations

import pytest
import torch
from rollout_util import batch, tiny_relay
from tiny import MASK_ID

from relaykit import DataExhausted, PersistentRollout, Policy, RelayState, bptt_rollout
from relaykit.policies import TopK


@pytest.fixture(scope="module")
def relay():  # noqa: ANN201
    return tiny_relay()


def test_a_row_without_maskable_position(relay) -> None:  # noqa: ANN001
    x0, maskable = batch(3, 6)
    maskable[1] = False
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] of the batch have no maskable position"):
        bptt_rollout(relay, x0, maskable=maskable)
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 1, 2\]"):
        bptt_rollout(relay, x0, maskable=torch.zeros_like(maskable))


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_below_one(relay, k) -> None:  # noqa: ANN001
    x0, maskable = batch()
    with pytest.raises(ValueError, match=r"k \(denoising steps per window\) must be an int >= 1"):
        bptt_rollout(relay, x0, maskable=maskable, k=k)
    with pytest.raises(ValueError, match=r"k \(denoising steps per window\) must be"):
        PersistentRollout(relay, [], k=0)


@pytest.mark.parametrize("bad", [32, 1000, -1])
def test_x0_outside_the_vocabulary(relay, bad: int) -> None:  # noqa: ANN001
    x0, maskable = batch()
    x0[0, 0] = bad
    with pytest.raises(ValueError, match=r"x0 holds token ids .* vocabulary of 32 \(ids 0\.\.31\)"):
        bptt_rollout(relay, x0, maskable=maskable)


def test_x0_with_the_mask_token_where_it_is_to_be_predicted(relay) -> None:  # noqa: ANN001
    x0, maskable = batch()
    x0[0, -1] = MASK_ID
    with pytest.raises(ValueError, match="x0 contains the mask token id 31 at a maskable position"):
        bptt_rollout(relay, x0, maskable=maskable)


def test_a_state_from_another_batch(relay) -> None:  # noqa: ANN001
    x0, maskable = batch(3, 6)
    z = x0.masked_fill(maskable, MASK_ID)
    with pytest.raises(ValueError, match=r"covers 2 rows at positions 0\.\.5, but this batch has 3 rows of length 6"):
        bptt_rollout(relay, x0, maskable=maskable, z=z, state=RelayState.zeros(2, 6, 16))
    with pytest.raises(ValueError, match=r"covers 3 rows at positions 0\.\.8, but this batch has 3 rows of length 6"):
        bptt_rollout(relay, x0, maskable=maskable, z=z, state=RelayState.zeros(3, 9, 16))
    with pytest.raises(ValueError, match="a state was given without z"):
        bptt_rollout(relay, x0, maskable=maskable, state=RelayState.zeros(3, 6, 16))
    other, _ = batch(3, 6, seed=1)
    with pytest.raises(ValueError, match=r"z disagrees with x0 in row\(s\)"):
        bptt_rollout(relay, x0, maskable=maskable, z=other)


class CommitsNothing(Policy):
    def __call__(self, confidence, candidates, generator=None):  # noqa: ANN001, ANN204
        return torch.zeros_like(candidates)


class CommitsAnything(Policy):
    def __call__(self, confidence, candidates, generator=None):  # noqa: ANN001, ANN204
        return torch.ones_like(candidates)


def test_a_policy_that_commits_nothing_stops_with_an_error(relay) -> None:  # noqa: ANN001
    x0, maskable = batch()
    with pytest.raises(RuntimeError, match="committed nothing in a row that still has masked positions"):
        bptt_rollout(relay, x0, maskable=maskable, policy=CommitsNothing())
    driver = PersistentRollout(relay, [(x0, maskable)] * 3, policy=CommitsNothing())
    with pytest.raises(RuntimeError, match="it would stall"):
        driver.step()
    with pytest.raises(RuntimeError, match="committed a position that was not a candidate"):
        bptt_rollout(relay, x0, maskable=maskable, policy=CommitsAnything())


def test_nothing_left_to_train_on(relay) -> None:  # noqa: ANN001
    x0, maskable = batch()
    with pytest.raises(ValueError, match="nothing is masked in this batch"):
        bptt_rollout(relay, x0, maskable=maskable, z=x0)


def test_shapes_and_options(relay) -> None:  # noqa: ANN001
    x0, maskable = batch(2, 6)
    with pytest.raises(ValueError, match=r"maskable must be a bool tensor shaped like x0 \(2, 6\)"):
        bptt_rollout(relay, x0, maskable=maskable.long())
    with pytest.raises(ValueError, match=r"x0 must be a \(batch, length\) tensor of integer token ids"):
        bptt_rollout(relay, x0[0], maskable=maskable[0])
    with pytest.raises(ValueError, match=r"loss must be one of \('mean', 'llada'\), got 'sum'"):
        bptt_rollout(relay, x0, maskable=maskable, loss="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"init must be one of \('full', 'random'\)"):
        bptt_rollout(relay, x0, maskable=maskable, init="half")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects a RelayModel"):
        bptt_rollout(relay.backbone, x0, maskable=maskable)
    with pytest.raises(RuntimeError, match="sync_counts=True needs an initialised torch.distributed"):
        bptt_rollout(relay, x0, maskable=maskable, sync_counts=True)


def test_driver_bad_data(relay) -> None:  # noqa: ANN001
    x0, maskable = batch(2, 6)
    with pytest.raises(ValueError, match=r"method must be one of \['mlm', 'relay', 'relay_sg', 'rollout'\]"):
        PersistentRollout(relay, [], method="bptt")
    with pytest.raises(TypeError, match="a data item must be"):
        PersistentRollout(relay, [x0]).step()
    with pytest.raises(ValueError, match=r"the data yields single samples \(n,\); pass batch_size"):
        PersistentRollout(relay, [(x0[0], maskable[0])]).step()
    longer = batch(2, 7)
    driver = PersistentRollout(relay, [(x0, maskable), longer], batch_size=2, policy=TopK(6))
    driver.step()
    with pytest.raises(ValueError, match="samples must all have the same length: this driver holds length 6"):
        driver.step()
    bad = x0.clone()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="vocabulary of 32"):
        PersistentRollout(relay, [(bad, maskable)]).step()


def test_driver_stops_when_the_data_runs_out(relay) -> None:  # noqa: ANN001
    data = [batch(2, 4, seed=s) for s in range(3)]
    driver = PersistentRollout(relay, data, policy=TopK(4), k=1)  # every window finishes every row
    steps = list(driver)
    assert len(steps) == 3 and driver.samples_drawn == 6
    with pytest.raises(DataExhausted, match="the data ran out after 3 items"):
        driver.step()
    with pytest.raises(DataExhausted, match="has no data iterable"):
        PersistentRollout(relay).step()
