"""The daemons' collector policy: survivors frozen every interval, all
collected again every full interval, so a frozen cycle that became garbage
is freed then."""

import gc
import weakref

import pytest

from nodepool.memory import YOUNG_THRESHOLD, LongLivedObjects


class Cycle:
    def __init__(self):
        self.me = self


@pytest.fixture
def clock():
    now = [1000.0]
    thresholds = gc.get_threshold()
    yield now
    gc.unfreeze()  # the freeze and thresholds are process-wide: leave them
    gc.set_threshold(*thresholds)


def test_survivors_are_frozen_and_frozen_garbage_waits_for_the_full_pass(clock):
    policy = LongLivedObjects(freeze_interval=60, full_interval=3600,
                              clock=lambda: clock[0])
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    kept = Cycle()
    policy.tick()  # the first tick is due at once
    assert gc.get_freeze_count() > 0
    alive = weakref.ref(kept)
    del kept
    gc.collect()
    assert alive() is not None  # frozen: the collector does not look at it

    fresh = Cycle()
    fresh_ref = weakref.ref(fresh)
    del fresh
    clock[0] += 30
    policy.tick()  # not due: nothing happens
    clock[0] += 31
    policy.tick()  # due: young garbage is collected before the freeze
    assert fresh_ref() is None
    assert alive() is not None

    clock[0] += 3600
    policy.tick()  # full: everything is looked at again
    assert alive() is None
    assert gc.get_freeze_count() > 0
