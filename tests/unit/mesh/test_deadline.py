"""The Deadline value object and the inherited deadline: which one a call gets, on one clock."""

from __future__ import annotations

import pytest

from mesh.deadline import Deadline, call_deadline, deadline_scope, detached, remaining


def test_a_deadline_knows_its_time_left_and_the_tighter_of_two() -> None:
    deadline = Deadline.after(2.0, now=100.0)
    assert deadline.at == 102.0
    assert deadline.remaining(now=101.5) == pytest.approx(0.5)
    assert not deadline.expired(now=101.999) and deadline.expired(now=102.0)
    sooner = Deadline(101.0)
    assert deadline.earlier(sooner) is sooner and sooner.earlier(deadline) is sooner
    assert deadline.earlier(None) is deadline
    assert Deadline(5.0) == Deadline(5.0) and len({Deadline(5.0), Deadline(5.0)}) == 1


def test_a_call_takes_the_tighter_of_its_timeout_and_the_inherited_deadline() -> None:
    assert call_deadline(None) is None
    own = call_deadline(None, default_timeout=10.0)
    assert own is not None and 9.0 < own.remaining() <= 10.0
    tight = Deadline.after(1.0)
    with deadline_scope(tight):
        assert call_deadline(30.0) is tight  # the caller's caller has less time: it wins
        assert call_deadline(None) is tight
        shorter = call_deadline(0.5)
        assert shorter is not None and shorter.at < tight.at
        left = remaining()
        assert left is not None and 0 < left <= 1.0
        with detached():
            assert call_deadline(None) is None and remaining() is None
    assert remaining() is None


def test_a_scope_never_extends_the_deadline_around_it() -> None:
    outer = Deadline.after(1.0)
    with deadline_scope(outer), deadline_scope(Deadline.after(60.0)):
        assert call_deadline(None) is outer
    with deadline_scope(None):
        assert remaining() is None
