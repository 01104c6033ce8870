"""Each destination's share of a process's delivery slots (delivery/slots.py)."""

from __future__ import annotations

from ingestlayer.delivery.slots import SLOW_FOR_SECONDS, DestinationSlots
from ingestlayer.records import LeasedDelivery, NewDelivery
from ingestlayer.store.lease_window import Room


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slots(clock: Clock | None = None) -> DestinationSlots:
    return DestinationSlots(per_destination=6, slow_limit=2, slow_seconds=1.0, clock=clock or Clock())


def fresh(*destinations: str) -> list[NewDelivery]:
    return [
        NewDelivery(f"dlv_{i}", "prj", f"evt_{i}", "a.b", "pip", did, "{}")
        for i, did in enumerate(destinations)
    ]


def leased(did: str) -> LeasedDelivery:
    return LeasedDelivery("dlv", "prj", "evt", "a.b", did, 0, 0, "{}", "lse", 0.0)


def test_a_destination_gets_its_share_then_none() -> None:
    s = slots()
    assert all(s.start("dst_a", None) for _ in range(6))
    assert not s.start("dst_a", None)
    assert s.start("dst_b", None)  # another destination is not held back
    room = s.room()
    assert (room.of("dst_a"), room.of("dst_b"), room.of("dst_new")) == (0, 5, 6)


def test_its_own_concurrency_lowers_its_share_and_raises_it_only_once_healthy() -> None:
    """A project's `concurrency: 10000` on a receiver that hangs held every slot of the process:
    above the share, its own limit holds only once an attempt has ended in time."""
    s = slots()  # a share of 6
    assert all(s.start("dst_a", 10) for _ in range(6)) and not s.start("dst_a", 10)
    s.finish("dst_a", 0.05)  # answered in time: healthy
    assert s.room().of("dst_a") == 5
    assert all(s.start("dst_a", 10) for _ in range(5)) and not s.start("dst_a", 10)
    # The limit changed to 1 (a new configuration): no new slot until it is below it.
    assert not s.start("dst_a", 1)
    assert s.start("dst_b", 1) and not s.start("dst_b", 1)  # lower than the share: at once
    s.finish("dst_a", 30.0)
    s.finish("dst_a", 30.0)  # timed out, a quarter of its attempts: slow, held to 2 like any other
    assert not s.start("dst_a", 10) and s.limit("dst_a") == 2


def test_slow_destinations_together_hold_at_most_their_pool() -> None:
    """Eight receivers that hang, an eighth of the slots each, held every slot; one project can
    make eight. Slow ones now hold half at most together; fresh ones are not pooled."""
    s = DestinationSlots(per_destination=12, slow_limit=2, slow_seconds=1.0, fresh_limit=4, slow_pool_limit=4)
    hanging = [f"dst_hangs_{i}" for i in range(4)]
    for did in hanging:
        slot = s.start(did, None)
        assert slot is not None and not slot.pooled  # fresh
        s.finish(did, 30.0, slot)  # a timeout: slow
        assert s.limit(did) == 2
    held = [s.start(hanging[0], None), s.start(hanging[0], None), s.start(hanging[1], None)]
    assert all(slot is not None and slot.pooled for slot in held)
    room = s.room()
    # What the pool has left (1) is offered once in all, not to each slow destination.
    assert sum(room.of(did) for did in hanging) == 1
    assert s.start(hanging[1], None) is not None
    assert s.start(hanging[2], None) is None  # the pool is full
    room = s.room()
    assert [room.of(did) for did in hanging] == [0, 0, 0, 0]
    # Fresh and healthy destinations are not held back by it.
    assert room.of("dst_new") == 4 and all(s.start("dst_new", None) for _ in range(4))
    s.finish("dst_ok", 0.05)
    assert all(s.start("dst_ok", None) for _ in range(12))
    # A pooled slot freed goes to the next slow destination.
    first = held[0]
    assert first is not None
    s.finish(hanging[0], 30.0, first)
    room = s.room()
    assert sum(room.of(did) for did in hanging) == 1 and s.start(hanging[2], None) is not None


def test_a_destination_that_turns_slow_does_not_free_pooled_slots_with_its_older_attempts() -> None:
    """Attempts a destination started while healthy end after it turned slow: they free no
    pooled slot, or slow destinations held more than the pool (12 of a pool of 8 were seen)."""
    s = DestinationSlots(per_destination=12, slow_limit=4, slow_seconds=1.0, fresh_limit=4, slow_pool_limit=4)
    s.finish("dst_a", 0.05)  # healthy
    older = [s.start("dst_a", None) for _ in range(10)]
    assert all(slot is not None and not slot.pooled for slot in older)
    for slot in older[:7]:
        assert slot is not None
        s.finish("dst_a", 30.0, slot)  # it starts hanging: slow, 3 still in flight
    assert s.limit("dst_a") == 4
    pooled = s.start("dst_a", None)
    assert pooled is not None and pooled.pooled
    for slot in older[7:]:
        assert slot is not None
        s.finish("dst_a", 30.0, slot)  # the older attempts end: the pooled one still runs
    s.finish("dst_b", 30.0)  # another slow destination
    more = [s.start("dst_b", None) for _ in range(4)]
    assert sum(slot is not None for slot in more) == 3  # 4 in the pool with dst_a's
    # Deliveries handed over and not started yet will take pooled slots too.
    freed = more[0]
    assert freed is not None
    s.finish("dst_b", 30.0, freed)  # one pooled slot free
    s.finish("dst_c", 30.0)  # a third slow destination, with a delivery handed over
    room = s.room()
    assert sum(room.of(did) for did in ("dst_a", "dst_b", "dst_c")) == 1
    s.hold([leased("dst_c")], 1)
    room = s.room()
    assert sum(room.of(did) for did in ("dst_a", "dst_b", "dst_c")) == 0


def test_a_slow_attempt_holds_the_destination_to_the_slow_limit_for_a_minute() -> None:
    clock = Clock()
    s = slots(clock)
    for _ in range(5):
        assert s.start("dst_a", None)
    s.finish("dst_a", 3.0)  # slower than slow_seconds
    assert s.in_flight("dst_a") == 4 and s.limit("dst_a") == 2
    assert not s.start("dst_a", None)  # 4 in flight, limit 2: no new slot
    s.leased(s.room(), want=10, got=0)  # a lease found it without room
    assert [s.finish("dst_a", 0.1) for _ in range(3)] == [False, False, True]  # room again at 1
    assert s.start("dst_a", None) and not s.start("dst_a", None)
    clock.now += SLOW_FOR_SECONDS + 1
    assert s.limit("dst_a") == 6  # no slow attempt in the last minute: its share again


def test_a_busy_destination_slow_now_and_then_keeps_its_share() -> None:
    """One answer in 200 over the slow limit (a receiver's occasional hiccup) does not hold a
    busy destination to the slow limit: it used to, for a minute after each, so for good."""
    clock = Clock()
    s = slots(clock)
    for minute in range(3):
        for i in range(2000):
            assert s.start("dst_a", None)
            s.finish("dst_a", 3.0 if i % 200 == 100 else 0.05)
            clock.now += 0.03
            assert s.limit("dst_a") == 6, (minute, i)


def test_a_destination_mostly_slow_is_held_until_its_answers_are_fast_again() -> None:
    clock = Clock()
    s = slots(clock)
    for _ in range(20):  # a receiver that times out on every attempt
        s.start("dst_a", None)
        s.finish("dst_a", 10.0)
        clock.now += 0.5
    assert s.limit("dst_a") == 2
    # It recovers: fast answers, until slow ones are under an eighth of the last minute's.
    for _ in range(100):
        s.start("dst_a", None)
        s.finish("dst_a", 0.05)
    assert s.limit("dst_a") == 2  # 20 slow of 120
    for _ in range(100):
        s.start("dst_a", None)
        s.finish("dst_a", 0.05)
    assert s.limit("dst_a") == 6  # 20 of 220: under an eighth
    # Other destinations were never held back.
    assert s.limit("dst_b") == 6


def test_a_busy_destination_that_starts_hanging_is_held_after_a_few_timeouts() -> None:
    """A minute of fast answers behind it would keep its whole share for most of a minute by
    the share of slow attempts alone; 8 timeouts in a row do it."""
    clock = Clock()
    s = slots(clock)
    for _ in range(30_000):  # 500 a second for a minute, all fast
        s.start("dst_a", None)
        s.finish("dst_a", 0.05)
        clock.now += 0.002
    for n in range(1, 9):
        s.start("dst_a", None)
        s.finish("dst_a", 10.0)  # a timeout
        assert s.limit("dst_a") == (2 if n == 8 else 6), n
    s.start("dst_a", None)
    s.finish("dst_a", 0.05)  # one fast answer ends the streak; the share is still small
    assert s.limit("dst_a") == 6


def test_finish_says_when_a_destination_that_cut_a_lease_short_has_room_again() -> None:
    s = slots()
    for _ in range(6):
        s.start("dst_a", None)
    s.start("dst_b", None)
    s.leased(s.room(), want=10, got=3)  # short: dst_a (room 0) and dst_b (room 5) may have cut it
    assert s.finish("dst_a", 0.1) is True  # the next lease may take it again
    assert s.finish("dst_a", 0.1) is False  # once
    assert s.finish("dst_b", 0.1) is True


def test_a_lease_that_was_not_cut_short_wakes_nothing() -> None:
    s = slots()
    for _ in range(6):
        s.start("dst_a", None)
    s.leased(s.room(), want=10, got=10)
    assert [s.finish("dst_a", 0.1) for _ in range(6)] == [False] * 6


def test_a_large_limit_is_leased_for_again_an_eighth_at_a_time() -> None:
    s = DestinationSlots(per_destination=16, slow_limit=2, slow_seconds=1.0, clock=Clock())
    for _ in range(16):
        s.start("dst_a", None)
    s.leased(s.room(), want=32, got=0)
    assert [s.finish("dst_a", 0.1) for _ in range(4)] == [False, True, False, False]


def test_take_hands_over_each_destinations_room_first_and_keeps_the_rest_in_order() -> None:
    s = slots()
    for _ in range(5):
        s.start("dst_a", None)
    batch = fresh("dst_a", "dst_a", "dst_b", "dst_a", "dst_b")
    ordered, n = s.take(batch, free=10)
    assert n == 3
    assert [d.id for d in ordered] == ["dlv_0", "dlv_2", "dlv_4", "dlv_1", "dlv_3"]

    # Handed over but not started yet: counted, so the next take does not hand over again.
    s.hold([leased("dst_b"), leased("dst_b")], 1)
    assert s.room().of("dst_b") == 4
    s.hold([leased("dst_b"), leased("dst_b")], -1)
    assert s.room().of("dst_b") == 6


def test_take_never_hands_over_more_than_the_free_slots() -> None:
    s = slots()
    ordered, n = s.take(fresh("dst_a", "dst_b", "dst_c"), free=2)
    assert n == 2 and [d.id for d in ordered] == ["dlv_0", "dlv_1", "dlv_2"]
    assert s.take(fresh("dst_a"), free=0) == (fresh("dst_a"), 0)


def test_a_destination_not_heard_from_lately_gets_a_quarter_until_an_attempt_ends() -> None:
    """Two receivers that hang from their first request held every slot (three quarters each)
    until their attempts timed out, up to a minute: every other destination waited. Until one of
    its attempts has ended, a destination now gets the fresh limit; a fast answer gives it its
    whole share at once, a slow one the slow limit."""
    clock = Clock()
    s = DestinationSlots(per_destination=12, slow_limit=2, slow_seconds=1.0, fresh_limit=4, clock=clock)
    # No more is leased for a destination not heard from than may start (it was leased three
    # quarters, and all but a quarter of that released again at once).
    assert s.room().of("dst_hangs") == 4
    for did in ("dst_hangs", "dst_hangs_too"):
        assert all(s.start(did, None) for _ in range(4)) and not s.start(did, None)
    assert s.room().of("dst_hangs") == 0
    assert all(s.start("dst_other", None) for _ in range(4))  # free slots left for the others

    s.finish("dst_other", 0.05)  # answered fast: its whole share
    assert s.limit("dst_other") == 12 and all(s.start("dst_other", None) for _ in range(9))
    s.finish("dst_hangs", 30.0)  # timed out: the slow limit
    assert s.limit("dst_hangs") == 2
    clock.now += 2 * SLOW_FOR_SECONDS  # nothing ended for two minutes: not heard from lately
    assert s.limit("dst_other") == 4
    assert slots().limit("dst_any") == 6  # without a fresh limit, the share at once


def test_a_pooled_slot_freed_wakes_the_lease_for_another_slow_destination() -> None:
    s = DestinationSlots(per_destination=12, slow_limit=2, slow_seconds=1.0, fresh_limit=4, slow_pool_limit=2)
    for did in ("dst_a", "dst_b"):
        s.finish(did, 30.0)  # slow
    taken = [s.start("dst_a", None), s.start("dst_a", None)]
    assert s.room().of("dst_b") == 0
    s.leased(Room({"dst_b": 0}, 4), 1, 0)  # a lease that found no room for dst_b
    first = taken[0]
    assert first is not None and first.pooled
    assert s.finish("dst_a", 30.0, first) is True  # dst_b may lease again, now
    rooms = [s.room() for _ in range(2)]
    # One pooled slot is free, offered to each slow destination in turn.
    assert [r.of("dst_a") + r.of("dst_b") for r in rooms] == [1, 1]
    assert {r.of("dst_b") for r in rooms} == {0, 1}


def test_a_destination_that_answers_too_many_requests_is_paused_then_limited() -> None:
    """A 429 pauses the whole destination until the time it gave, then lets half as many
    attempts run at once as it had; deliveries that go through raise the limit back."""
    clock = Clock()
    s = slots(clock)  # a share of 6
    taken = [s.start("dst_a", None) for _ in range(4)]
    assert all(taken)
    assert s.answered_too_many("dst_a", 2.0) == 2.0
    # Paused: nothing starts, and leases and the router's hand-overs find no room.
    assert s.start("dst_a", None) is None
    assert s.room().of("dst_a") <= 0
    first, n = s.take(fresh("dst_a", "dst_b"), 10)
    assert n == 1 and first[0].destination_id == "dst_b"
    # The other attempts in flight answer 429 too: the pause holds, the limit is halved once.
    assert s.answered_too_many("dst_a", 1.0) == 2.0
    assert s.answered_too_many("dst_a", 3.0) == 3.0  # asked for longer: the pause is longer
    for _ in range(4):
        s.finish("dst_a", 0.05)
    clock.now += 2.9
    assert s.start("dst_a", None) is None
    clock.now += 0.2
    # Over: half of the 4 it had in flight.
    assert s.limit("dst_a") == 2
    assert s.start("dst_a", None) and s.start("dst_a", None)
    assert s.start("dst_a", None) is None
    assert s.room().of("dst_a") == 0
    s.finish("dst_a", 0.05, delivered=True)
    s.finish("dst_a", 0.05, delivered=True)
    assert s.limit("dst_a") == 3  # a round of 2 went through: one more
    for _ in range(3):
        assert s.start("dst_a", None)
        s.finish("dst_a", 0.05, delivered=True)
    assert s.limit("dst_a") == 4
    for _ in range(4 + 5):
        assert s.start("dst_a", None)
        s.finish("dst_a", 0.05, delivered=True)
    assert s.limit("dst_a") == 6  # its whole share again, and no longer listed as held back
    assert "dst_a" not in set(s.rate.held_back())


def test_a_failure_that_is_not_a_rate_limit_does_not_raise_the_limit_back() -> None:
    clock = Clock()
    s = slots(clock)
    assert s.start("dst_a", None) and s.start("dst_a", None)
    s.answered_too_many("dst_a", None)  # no Retry-After: a short pause of its own
    s.finish("dst_a", 0.05)
    s.finish("dst_a", 0.05)
    clock.now += 1.0
    assert s.limit("dst_a") == 1
    for _ in range(5):
        assert s.start("dst_a", None)
        s.finish("dst_a", 0.05)  # failed (a 500): the limit stays
    assert s.limit("dst_a") == 1
    assert s.start("dst_b", None)  # other destinations keep their share
    assert s.limit("dst_b") == 6


def project_slots(per_project: int = 4) -> DestinationSlots:
    return DestinationSlots(per_destination=6, slow_limit=2, slow_seconds=1.0, per_project=per_project)


def test_a_project_is_held_to_its_share_whatever_its_number_of_destinations() -> None:
    """Four destinations of one project that hang from their first request held every slot of
    the process, at a quarter each: a project now holds at most its share, and another
    project's deliveries find the rest."""
    s = project_slots(per_project=4)
    started = [s.start(did, None, "prj_a") for did in ("dst_1", "dst_2", "dst_3", "dst_4")]
    assert all(started)
    assert s.start("dst_5", None, "prj_a") is None  # a fifth destination of the same project
    assert s.start("dst_1", None, "prj_a") is None  # nor more to one it has
    assert s.start("dst_b", None, "prj_b")  # another project is not held back
    room = s.room()
    assert [room.of(d) for d in ("dst_1", "dst_4", "dst_5")] == [0, 0, 0]
    assert room.of("dst_b") == 3 and room.of("dst_unknown") == 6  # its project has 3 left
    # The router's fresh deliveries: the full project's wait, the other's start.
    batch = [
        NewDelivery("dlv_1", "prj_a", "evt_1", "a.b", "pip", "dst_6", "{}"),
        NewDelivery("dlv_2", "prj_b", "evt_2", "a.b", "pip", "dst_c", "{}"),
    ]
    first, n = s.take(batch, 10)
    assert n == 1 and first[0].project_id == "prj_b"


def test_a_full_project_is_leased_for_again_once_an_eighth_of_its_share_is_free() -> None:
    s = project_slots(per_project=16)
    for i in range(16):
        assert s.start(f"dst_{i % 8}", None, "prj_a")
    assert s.start("dst_0", None, "prj_a") is None  # left out: wanted once there is room
    assert s.finish("dst_1", 0.05) is False  # one free: not yet worth a lease
    assert s.finish("dst_2", 0.05) is True  # two, an eighth of 16: lease again
    assert s.room().of("dst_0") == 2


def test_deliveries_handed_over_count_against_their_project_until_they_start() -> None:
    s = project_slots(per_project=3)
    handed = [
        LeasedDelivery(f"dlv_{i}", "prj_a", "evt", "a.b", "dst_a", 0, 0, "{}", "lse", 0.0) for i in range(2)
    ]
    s.hold(handed, 1)
    assert s.start("dst_other", None, "prj_a")
    assert s.start("dst_other", None, "prj_a") is None  # 2 handed over + 1 in flight
    s.hold(handed, -1)
    assert s.start("dst_a", None, "prj_a") and s.start("dst_a", None, "prj_a")


def test_destinations_of_a_project_with_nothing_in_flight_are_not_kept() -> None:
    """A process kept the project of every destination it had ever delivered to, deleted ones
    too, for its whole life: now only those of projects with attempts in flight or handed
    over, and the share holds as before."""
    s = project_slots(per_project=4)
    for i in range(1000):
        assert s.start(f"dst_{i}", None, "prj_a")
        s.finish(f"dst_{i}", 0.05)
    assert s.projects is not None and s.projects._of == {} and s.projects._destinations == {}
    assert all(s.start(did, None, "prj_a") for did in ("dst_1", "dst_2", "dst_3", "dst_4"))
    assert s.start("dst_5", None, "prj_a") is None
    assert set(s.projects._of) == {"dst_1", "dst_2", "dst_3", "dst_4", "dst_5"}
