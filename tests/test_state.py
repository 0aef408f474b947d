"""RelayState: functional updates, windows, resets, extension and autograd through writes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaykit import RelayState


@given(st.integers(1, 3), st.integers(1, 10), st.integers(0, 5), st.integers(0, 2**16))
def test_write_then_gather_roundtrip_and_leaves_old_state_untouched(b: int, n: int, offset: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = RelayState(torch.randn(b, n, 4, generator=g), torch.rand(b, n, generator=g) < 0.5, offset)
    old_hidden, old_filled = s.hidden.clone(), s.filled.clone()
    q = int(torch.randint(1, n + 1, (1,), generator=g))
    pos = torch.stack([torch.randperm(n, generator=g)[:q] + offset for _ in range(b)])  # (b, q)
    values = torch.randn(b, q, 4, generator=g)
    where = torch.rand(b, q, generator=g) < 0.5
    s2 = s.write(pos, values, where)
    assert torch.equal(s.hidden, old_hidden) and torch.equal(s.filled, old_filled)  # functional
    h, f = s2.gather(pos)
    assert torch.equal(h[where], values[where])
    assert torch.equal(h[~where], s.gather(pos)[0][~where])
    assert bool(f[where].all())
    untouched = torch.ones(b, n, dtype=torch.bool)
    untouched.scatter_(1, pos - offset, False)
    assert torch.equal(s2.hidden[untouched], s.hidden[untouched])


def test_window_reset_extend_select() -> None:
    s = RelayState(torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2), torch.ones(2, 6, dtype=torch.bool))
    w = s.window(2, 5)
    assert w.offset == 2 and w.length == 3 and torch.equal(w.hidden, s.hidden[:, 2:5])
    r = s.reset([0])
    assert torch.equal(r.hidden[0], torch.zeros(6, 2)) and torch.equal(r.hidden[1], s.hidden[1])
    assert not bool(r.filled[0].any()) and bool(r.filled[1].all())
    e = s.extend(9)
    assert e.length == 9 and torch.equal(e.hidden[:, :6], s.hidden) and not bool(e.filled[:, 6:].any())
    assert s.extend(3) is s
    assert torch.equal(s.select([1]).hidden, s.hidden[1:])
    assert s.reset(torch.tensor([False, True])).filled[0].all()


def test_gradients_flow_through_writes_and_stop_at_detach() -> None:
    base = RelayState.zeros(1, 4, 3)
    values = torch.randn(1, 2, 3, requires_grad=True)
    s = base.write(torch.tensor([[1, 3]]), values)
    s.hidden.sum().backward()
    assert values.grad is not None and torch.equal(values.grad, torch.ones(1, 2, 3))
    assert not s.detach().hidden.requires_grad


def test_select_accepts_a_bool_row_mask() -> None:
    s = RelayState(torch.arange(3.0).view(3, 1, 1).expand(3, 2, 1).clone(), torch.ones(3, 2, dtype=torch.bool))
    assert s.select(torch.tensor([True, False, True])).hidden[:, 0, 0].tolist() == [0.0, 2.0]
    assert s.select([2]).hidden[:, 0, 0].tolist() == [2.0]
    with pytest.raises(ValueError, match=r"bool row mask must have shape \(3,\)"):
        s.select(torch.tensor([True, False]))
    with pytest.raises(IndexError, match=r"rows \[3\] are outside the batch of 3"):
        s.select([3])
