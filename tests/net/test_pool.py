"""Pools: PoolGroup's fair share (one caller connection cannot take an upstream away from the others), and
ConnectionPool's connect / backoff / reconnect / recycle loop, with fake connections and virtual time."""

from __future__ import annotations

import pytest
import structlog
import trio

from interlink.net.pool import HEADROOM, MIN_SHARE, STABLE_AFTER, ConnectionPool, PoolGroup

from tests.net.support import eventually


class Slots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.usable = True


def group(*slots: int) -> PoolGroup:
    pool = ConnectionPool("p", connect=None)  # type: ignore[arg-type]
    pool.endpoints = [Slots(n) for n in slots]  # type: ignore[list-item]
    return PoolGroup("g", [pool])


def take(g: PoolGroup, caller: str, count: int) -> int:
    return sum(g.acquire(caller) for _ in range(count))


def test_a_caller_alone_leaves_headroom_for_newcomers():
    g = group(256, 256)
    assert take(g, "attacker", 10_000) == 512 - 512 // HEADROOM
    assert take(g, "legit", 20) == MIN_SHARE  # a newcomer gets in at once (the headroom)
    assert not g.acquire("attacker")  # two callers now: the attacker is far above its half
    for _ in range(448 - 256):  # as the attacker's calls finish, it is held to its half ...
        g.release("attacker")
    assert not g.acquire("attacker")
    assert take(g, "legit", 100) > 50  # ... and the other caller gets the rest


def test_two_callers_share_and_release_gives_back():
    g = group(100)
    assert take(g, "a", 60) == 60
    held_b = take(g, "b", 60)
    assert MIN_SHARE <= held_b < 60  # b gets what is left above the headroom
    assert g.held == 60 + held_b <= 100 - 100 // HEADROOM
    for _ in range(60):
        g.release("a")
    assert "a" not in g.holders and g.held == held_b
    assert take(g, "b", 100) > 0


def test_small_callers_always_get_their_minimum():
    g = group(16)
    assert take(g, "big", 100) == 16 - 16 // HEADROOM
    assert take(g, "small", MIN_SHARE) >= 1


def test_releasing_an_unknown_caller_is_harmless():
    g = group(10)
    g.release("nobody")
    assert g.held == 0 and g.holders == {}


# --- ConnectionPool: connecting, reconnecting, recycling (fake connections, virtual time) -------------------


class FakeEndpoint:
    """A pooled connection that serves until `end()` (or `crash()`)."""

    remote = "fake:1"
    in_flight = 0
    idle_since = 0.0

    def __init__(self, name: str, slots: int = 4) -> None:
        self.name = name
        self.streams: dict = {}
        self.close_reason = ""
        self.closed = self.draining = False
        self.keepalive_args: tuple[float, float] | None = None
        self._slots = slots
        self._ended = trio.Event()
        self._crash = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.draining

    def has_capacity(self) -> bool:
        return self.usable and len(self.streams) < self._slots

    @property
    def slots(self) -> int:
        return self._slots

    async def run(self) -> None:
        await self._ended.wait()
        if self._crash:
            raise RuntimeError("bug in the connection")

    async def keepalive(self, interval: float, timeout: float) -> None:
        self.keepalive_args = (interval, timeout)
        await trio.sleep_forever()

    def retire(self, reason: str) -> None:
        self.draining = True
        self.close_reason = reason

    def end(self, reason: str = "closed by the remote side", crash: bool = False) -> None:
        self.closed, self.close_reason, self._crash = True, reason, crash
        self._ended.set()


class Dialer:
    """The pool's connector: each attempt takes the next outcome of `script` (an exception to raise,
    "hang" to never answer, or "up" for a new FakeEndpoint); after the script, every attempt succeeds."""

    def __init__(self, *script: object, limit: int = 1_000, delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay  # how long each attempt takes
        self.attempts: list[float] = []
        self.made: list[FakeEndpoint] = []
        self.limit = limit  # attempts beyond it hang: a runaway loop cannot spin forever

    async def __call__(self) -> FakeEndpoint:
        self.attempts.append(trio.current_time())
        await trio.sleep(self.delay)  # a real connect always waits for something
        outcome = self.script.pop(0) if self.script else "up"
        if outcome == "hang" or len(self.attempts) > self.limit:
            await trio.sleep_forever()
        if isinstance(outcome, BaseException):
            raise outcome
        self.made.append(FakeEndpoint(f"e{len(self.made)}"))
        return self.made[-1]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


async def test_a_pool_retries_with_exponential_backoff_and_jitter_until_it_connects(autojump_clock):
    dialer = Dialer(*[ConnectionError("refused")] * 6)
    pool = ConnectionPool("p", dialer, backoff_initial=0.1, backoff_max=1.0, keepalive_interval=7, keepalive_timeout=3)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            assert not pool.up and pool.last_error == "not connected yet"
            with trio.fail_after(60):
                await pool.wait_ready()
            assert pool.up and pool.ever_connected and pool.endpoints == dialer.made
            await eventually(lambda: dialer.made[0].keepalive_args == (7, 3))
            nursery.cancel_scope.cancel()
    expected = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # doubled each time, up to the ceiling
    assert all(0.8 * e <= g <= 1.2 * e for g, e in zip(gaps(dialer.attempts), expected)), gaps(dialer.attempts)
    assert [e["error"] for e in logs if e["event"] == "pool.connect_failed"] == ["refused"]  # once per reason


@pytest.mark.parametrize(
    ("failure", "error"),
    [("hang", "connect timed out after 2s"), (OSError(), "OSError"), (ValueError("bad address"), "bad address")],
)
async def test_a_failed_connect_is_kept_as_the_pools_last_error(failure, error, autojump_clock):
    dialer = Dialer(failure, "hang")
    pool = ConnectionPool("p", dialer, connect_timeout=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await eventually(lambda: len(dialer.attempts) == 2)
        assert pool.last_error == error and pool.connecting == 1
        group = PoolGroup("g", [pool])
        assert group.first_connect_pending and group.connecting
        assert group.last_error == f"p: {error}"
        nursery.cancel_scope.cancel()


class RecordingTable:
    """The process-wide connection table as the pool uses it (ConnectionTable itself holds only real connections,
    not this file's fakes)."""

    def __init__(self) -> None:
        self.held: list = []

    def __iter__(self):
        return iter(self.held)

    def add(self, connection, group: str = "outbound") -> None:
        self.held.append(connection)

    def discard(self, connection) -> None:
        if connection in self.held:
            self.held.remove(connection)


async def test_a_lost_connection_is_replaced_at_once_and_leaves_the_table(autojump_clock):
    dialer = Dialer()
    table = RecordingTable()
    pool = ConnectionPool("p", dialer, backoff_initial=3, table=table)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await eventually(lambda: pool.up)
        first = dialer.made[0]
        assert list(table) == [first]
        await trio.sleep(STABLE_AFTER)  # a connection that lived: its loss is not a flapping peer
        first.end("connection lost: reset")
        await eventually(lambda: len(dialer.made) == 2 and pool.endpoints == [dialer.made[1]])
        assert gaps(dialer.attempts)[0] - STABLE_AFTER < 0.01  # no backoff (3 s) after a connection that was up
        assert list(table) == [dialer.made[1]]
        nursery.cancel_scope.cancel()


async def test_a_connection_that_ends_as_soon_as_it_is_made_is_redialled_with_backoff(autojump_clock):
    class Flapping(Dialer):
        async def __call__(self) -> FakeEndpoint:
            endpoint = await super().__call__()
            endpoint.end("connection closed by the remote side")  # e.g. a peer that refuses us after TLS
            return endpoint

    dialer = Flapping(limit=200)
    pool = ConnectionPool("p", dialer, backoff_initial=0.05, backoff_max=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert len(dialer.attempts) < 20, f"{len(dialer.attempts)} connects within {max(dialer.attempts):g}s"


async def test_a_connection_that_crashes_is_logged_and_replaced(autojump_clock):
    dialer = Dialer()
    pool = ConnectionPool("p", dialer)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            await eventually(lambda: pool.up)
            dialer.made[0].end(crash=True)
            await eventually(lambda: len(dialer.made) == 2 and pool.up)
            nursery.cancel_scope.cancel()
    assert any(e["event"] == "pool.connection_crashed" for e in logs)


async def test_recycling_dials_a_replacement_and_the_old_connection_finishes_its_calls(autojump_clock):
    dialer = Dialer()
    pool = ConnectionPool("p", dialer)
    pool.recycle(FakeEndpoint("never served"), "before run: nothing to do")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await eventually(lambda: pool.up)
        old = dialer.made[0]
        old.streams[1] = "a call in flight"
        pool.recycle(old, "certificates reloaded")
        pool.recycle(old, "again")  # once is enough
        await eventually(lambda: len(pool.endpoints) == 2)
        assert old.draining and old.close_reason == "certificates reloaded" and len(dialer.made) == 2
        assert pool.pick() is dialer.made[1]  # the old one takes no new calls
        old.end("drained")
        await eventually(lambda: pool.endpoints == [dialer.made[1]])
        await trio.sleep(10)
        assert len(dialer.made) == 2  # the old slot's loop ended: no reconnect for it
        nursery.cancel_scope.cancel()


async def test_a_retired_pool_stops_reconnecting(autojump_clock):
    dialer = Dialer()
    pool = ConnectionPool("p", dialer, size=2)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            await eventually(lambda: len(pool.endpoints) == 2)
            pool.retired = True
            for endpoint in dialer.made:
                endpoint.end("retired")
    assert len(dialer.made) == 2 and pool.endpoints == []  # pool.run returned by itself


def test_pick_prefers_the_least_loaded_connection_with_room():
    pool = ConnectionPool("p", connect=None)  # type: ignore[arg-type]
    busy, light, full = FakeEndpoint("busy"), FakeEndpoint("light"), FakeEndpoint("full", slots=1)
    busy.streams = {1: None, 3: None}
    light.streams = {1: None}
    full.streams = {1: None}
    pool.endpoints = [busy, full, light]
    assert pool.pick() is light
    light.draining = True
    assert pool.pick() is busy
    busy.closed = True
    assert pool.pick() is None


def pool_of(name: str, *endpoints: FakeEndpoint) -> ConnectionPool:
    pool = ConnectionPool(name, connect=None)  # type: ignore[arg-type]
    pool.endpoints = list(endpoints)
    return pool


def test_a_group_picks_its_pools_round_robin_and_skips_pools_without_room():
    one, two, three = FakeEndpoint("1"), FakeEndpoint("2"), FakeEndpoint("3", slots=0)
    group = PoolGroup("g", [pool_of("a", one), pool_of("b", two), pool_of("c", three)])
    assert [group.pick() for _ in range(4)] == [one, two, one, two]
    one.closed = two.closed = True
    assert group.pick() is None and group.up  # c is up, but has no room
    assert group.last_error == "a: not connected yet; b: not connected yet"
    three.closed = True
    assert not group.up
    assert PoolGroup("empty", []).last_error == "no address"


async def test_group_wait_ready_returns_when_any_pool_is_up(autojump_clock):
    slow, fast = Dialer("hang"), Dialer(*[ConnectionError("x")] * 3)
    group = PoolGroup("g", [ConnectionPool("slow", slow, connect_timeout=100), ConnectionPool("fast", fast)])
    async with trio.open_nursery() as nursery:
        for pool in group.pools:
            nursery.start_soon(pool.run)
        with trio.fail_after(30):
            await group.wait_ready()
            await group.wait_settled()
        assert group.up and not group.first_connect_pending and group.connecting  # slow is still trying
        assert group.last_error == "slow: not connected yet"
        nursery.cancel_scope.cancel()


async def test_group_wait_settled_returns_when_the_attempts_failed(autojump_clock):
    dialer = Dialer(ConnectionError("refused"), "hang", delay=1.0)
    pool = ConnectionPool("p", dialer, backoff_initial=5)
    group = PoolGroup("g", [pool])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await eventually(lambda: pool.connecting)
        with trio.fail_after(4):
            await group.wait_settled()  # the first attempt fails after 1 s; the next one is 4-6 s later
        assert trio.current_time() - dialer.attempts[0] >= 1.0
        assert not group.up and not group.connecting and group.last_error == "p: refused"
        nursery.cancel_scope.cancel()


async def test_a_slot_counts_as_connecting_from_the_moment_it_is_scheduled(autojump_clock):
    """A call that arrives between a pool's creation (or a recycle) and the first step of the slot's loop
    must wait for that attempt, not fail with "not connected yet" (the CA rotation e2e test lost a call in
    that window once scheduling changed)."""
    dialer = Dialer(delay=1.0)
    pool = ConnectionPool("p", dialer, size=2)
    group = PoolGroup("g", [pool])
    assert pool.connecting == 2 and group.first_connect_pending  # created, not yet run
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await eventually(lambda: len(pool.endpoints) == 2)
        assert pool.connecting == 0
        for endpoint in list(pool.endpoints):
            pool.recycle(endpoint, "certificates reloaded")
        assert not group.up and group.connecting and pool.connecting == 2  # no step has run since
        with trio.fail_after(5):
            await group.wait_settled()
        assert group.up and pool.connecting == 0
        nursery.cancel_scope.cancel()


async def test_a_pool_retired_before_its_slots_ran_is_not_left_connecting(autojump_clock):
    pool = ConnectionPool("p", Dialer(), size=3)
    pool.retired = True
    await pool.run()
    assert pool.connecting == 0


class RetiringDialer(Dialer):
    """Its connections end at once when retired with no call in flight, as real ones do."""

    async def __call__(self) -> FakeEndpoint:
        endpoint = await super().__call__()
        endpoint.idle_since = trio.current_time()
        endpoint.retire = lambda reason: endpoint.end(reason)  # type: ignore[method-assign]
        return endpoint


async def test_an_idle_connection_is_closed_and_dialled_again_when_a_call_needs_it(autojump_clock):
    dialer = RetiringDialer(ConnectionError("refused"))
    pool = ConnectionPool("p", dialer, idle_timeout=30, backoff_initial=0.1)
    group = PoolGroup("g", [pool])
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run)
            await eventually(lambda: pool.endpoints)
            first = pool.endpoints[0]
            first.in_flight = 1  # a call in flight: never idle, however long it takes
            await trio.sleep(100)
            assert not first.closed
            first.in_flight, first.idle_since = 0, trio.current_time()  # its call ended now
            await trio.sleep(29)
            assert not first.closed
            await trio.sleep(2)
            assert first.closed and "idle timeout" in first.close_reason
            await eventually(lambda: pool.dormant == 1)
            assert pool.up and not pool.endpoints and len(dialer.made) == 1  # dormant: not dialled again by itself
            await trio.sleep(1000)
            assert len(dialer.made) == 1
            assert group.pick() is None and group.waking and pool.connecting == 1  # a call needs it: dialled
            with trio.fail_after(5):
                await group.wait_settled()
            assert group.pick() is dialer.made[1] and not group.waking and pool.dormant == 0
            nursery.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert events.count("pool.idle_closed") == 1 and events.count("pool.waking") == 1


async def test_a_dormant_pool_that_cannot_be_reached_again_is_down_and_retried_as_usual(autojump_clock):
    dialer = RetiringDialer()
    pool = ConnectionPool("p", dialer, idle_timeout=5, backoff_initial=0.1)
    group = PoolGroup("g", [pool])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run)
        await trio.sleep(6)
        assert pool.dormant == 1
        dialer.script = [ConnectionError("refused")] * 3
        assert group.pick() is None and group.waking
        with trio.fail_after(5):
            await group.wait_settled()  # the wake-up attempt failed: not waking, not up
        assert not group.waking and not pool.up and pool.last_error == "refused"
        await eventually(lambda: pool.endpoints)  # the slot goes on dialling with backoff, as after any loss
        assert len(dialer.attempts) == 5
        nursery.cancel_scope.cancel()
