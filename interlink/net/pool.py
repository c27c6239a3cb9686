"""Long-lived, multiplexed connections to one remote address (HTTP/2 or Bolt), kept up with reconnect and
backoff, and the groups of them that one upstream (a peer site's gateways, an export's providers) is.

A group shares its connections' capacity fairly among the connections of the callers that use it: one
caller connection may hold at most `capacity // callers` of the group's call slots (at least MIN_SHARE), and
a caller that already holds MIN_SHARE may not take the last eighth of the slots (`HEADROOM`): one caller
pipelining thousands of calls leaves room for everyone else and for a caller that has not arrived yet,
while a group with room to spare is not held back."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Awaitable, Callable, Hashable, Protocol

import structlog
import trio

from interlink.config import HeaderStage, ProviderTags
from interlink.net import trips

if TYPE_CHECKING:
    from interlink.config import OutlierConfig
    from interlink.net.connection import ConnectionTable

log = structlog.get_logger("interlink.net.pool")

# How long after an upstream's pools start calls wait for its very first connection (a gateway that just
# started, or an upstream added by a reload or the registry); after that, a call to one never reached fails at once.
FIRST_CONNECT_WAIT = 5.0
STABLE_AFTER = 1.0  # seconds a connection must live for its replacement to be dialled without backoff
MIN_SHARE = 8  # call slots any caller connection may always hold in a group
HEADROOM = 8  # 1/HEADROOM of a group's slots are kept for callers holding fewer than MIN_SHARE


class PooledConnection(Protocol):
    """What a pool needs of a connection (an H2Endpoint or a BoltEndpoint)."""

    name: str
    streams: dict
    close_reason: str
    idle_since: float  # when its last call ended

    @property
    def in_flight(self) -> int: ...

    @property
    def usable(self) -> bool: ...
    def has_capacity(self) -> bool: ...
    @property
    def slots(self) -> int: ...
    async def run(self) -> None: ...
    async def keepalive(self, interval: float, timeout: float) -> None: ...
    def retire(self, reason: str) -> None: ...


Connector = Callable[[], Awaitable[PooledConnection]]


class ConnectionPool:
    """`size` connections to one address. Each slot connects, serves until its connection ends, then
    reconnects with exponential backoff and jitter. `pick()` is synchronous and cheap: the call path never
    waits for a connection unless the pool has never been up yet (`wait_ready`)."""

    def __init__(
        self,
        name: str,
        connect: Connector,
        *,
        size: int = 1,
        connect_timeout: float = 5.0,
        keepalive_interval: float = 10.0,
        keepalive_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        table: ConnectionTable | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """`idle_timeout`: a connection that carried no call for that long is closed, and its slot stays dormant
        until a call needs it (providers: limits.provider_idle_timeout_ms); None keeps connections up."""
        self.name = name
        self.size = size
        self.endpoints: list[PooledConnection] = []
        self.last_error = "not connected yet"
        self._logged_error = ""
        self.ever_connected = False
        # Slots whose connection is being made. A slot counts from the moment its loop is scheduled (here
        # for the pool's own slots, in `recycle` for a replacement): a call that arrives before the loop has
        # run waits for that attempt instead of failing with "not connected yet".
        self.connecting = size
        self._connect = connect
        self._connect_timeout = connect_timeout
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._backoff = (backoff_initial, backoff_max)
        self._ready = trio.Event()
        self._table = table
        self._nursery: trio.Nursery | None = None
        self._recycled: set[int] = set()  # ids of endpoints replaced by `recycle`: their slot loop ends
        self.retired = False  # set when nobody routes here any more: slots stop reconnecting
        self.started_at: float | None = None  # when its slots started dialling (run)
        self.idle_timeout = idle_timeout
        self.dormant = 0  # slots closed for idleness, waiting for a call to need them
        self.waking = False  # a call needed a dormant pool: its connection is being made
        self._idled: dict[int, trio.Event] = {}  # endpoints closed for idleness -> what wakes their slot
        self._wake = trio.Event()

    def pick(self) -> PooledConnection | None:
        """The least-loaded connection with room for one more stream, or None (then a dormant pool wakes up:
        the call waits for it, `PoolGroup.waking`)."""
        best: PooledConnection | None = None
        for endpoint in self.endpoints:
            if endpoint.has_capacity() and (best is None or len(endpoint.streams) < len(best.streams)):
                best = endpoint
        if best is None and self.dormant:
            self._wake_up()
        return best

    @property
    def up(self) -> bool:
        """A connection is usable, or the pool is dormant or waking (closed for idleness: presumed reachable)."""
        if self.waking or self.dormant:
            return True
        for endpoint in self.endpoints:  # (a loop: asked for every routed call)
            if endpoint.usable:
                return True
        return False

    def _wake_up(self) -> None:
        log.info("pool.waking", pool=self.name, slots=self.dormant)
        self.connecting += self.dormant  # their attempts, counted before their loops run
        self.dormant = 0
        self.waking = True
        wake, self._wake = self._wake, trio.Event()
        wake.set()

    async def wait_ready(self) -> None:
        while not self.up:
            await self._ready.wait()

    async def run(self) -> None:
        self.started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for slot in range(self.size):
                nursery.start_soon(self._keep_slot_connected, slot)

    def recycle(self, endpoint: PooledConnection, reason: str) -> None:
        """Replace a connection without failing a call: a new one is dialled at once for its slot, the old
        one takes no new calls and closes when its calls are done (after a reload changed the certificates
        it was made with)."""
        if id(endpoint) in self._recycled or self._nursery is None:
            return
        self._recycled.add(id(endpoint))
        log.info("pool.recycled", pool=self.name, endpoint=endpoint.name, reason=reason)
        self.connecting += 1  # the replacement's attempt, counted before its loop runs
        endpoint.retire(reason)
        self._nursery.start_soon(self._keep_slot_connected, -1)

    async def _keep_slot_connected(self, slot: int) -> None:
        initial, ceiling = self._backoff
        delay = initial
        counted = True  # this loop's first attempt was counted when it was scheduled
        while not self.retired:
            endpoint = await self._connect_once(slot, counted)
            counted = False
            if endpoint is None:
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, ceiling)
                continue
            connected_at = trio.current_time()
            try:
                await self._serve(endpoint)
            except Exception:  # a bug in one connection must not take the gateway down
                log.exception("pool.connection_crashed", pool=self.name, slot=slot)
            log.info("pool.connection_closed", pool=self.name, slot=slot, reason=endpoint.close_reason)
            if id(endpoint) in self._recycled:
                self._recycled.discard(id(endpoint))
                return  # its replacement has its own loop
            wake = self._idled.pop(id(endpoint), None)
            if wake is not None:  # dormant until a call needs this pool again
                await wake.wait()
                counted, delay = True, initial
                continue
            if trio.current_time() - connected_at >= STABLE_AFTER:
                delay = initial  # a connection that lived is replaced at once
            else:  # one that ends as soon as it is made (refused after TLS, a crash-looping provider): back off
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, ceiling)
        if counted:  # retired before its first attempt
            self.connecting -= 1

    async def _connect_once(self, slot: int, counted: bool = False) -> PooledConnection | None:
        if not counted:
            self.connecting += 1
        try:
            with trio.fail_after(self._connect_timeout):
                endpoint = await self._connect()
        except trio.TooSlowError:
            self.last_error = f"connect timed out after {self._connect_timeout:g}s"
        except Exception as exc:  # any failure to connect is retried; the reason is kept for errors/logs
            self.last_error = str(exc) or type(exc).__name__
        else:
            return endpoint
        finally:
            self.connecting -= 1
            self.waking = False
        # One warning per distinct reason, not one per retry.
        if self.last_error != self._logged_error:
            self._logged_error = self.last_error
            log.warning("pool.connect_failed", pool=self.name, slot=slot, error=self.last_error)
        return None

    async def _serve(self, endpoint: PooledConnection) -> None:
        self.endpoints.append(endpoint)
        attributes = getattr(endpoint, "attributes", None)
        if attributes is not None:
            attributes["pool"] = self  # whose outcome a call reports (PoolGroup.outcome)
        if self._table is not None:
            self._table.add(endpoint)  # type: ignore[arg-type]
        self.ever_connected = True
        self._logged_error = ""
        log.info("pool.connected", pool=self.name, endpoint=endpoint.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(endpoint.keepalive, *self._keepalive)
                if self.idle_timeout is not None:
                    nursery.start_soon(self._close_when_idle, endpoint, self.idle_timeout)
                self._ready.set()
                self._ready = trio.Event()
                await endpoint.run()
                nursery.cancel_scope.cancel()
        finally:
            self.endpoints.remove(endpoint)
            if self._table is not None:
                self._table.discard(endpoint)  # type: ignore[arg-type]
            self.last_error = endpoint.close_reason or "connection closed"


    async def _close_when_idle(self, endpoint: PooledConnection, timeout: float) -> None:
        """Retire `endpoint` once it has carried no call for `timeout` (its slot then sleeps: `dormant`)."""
        while True:
            if endpoint.in_flight:
                await trio.sleep(timeout)
                continue
            # (one absolute deadline, asked and awaited alike: `now - since >= timeout` and a sleep of
            # `timeout - idle` can disagree by a rounding error and spin forever)
            deadline = endpoint.idle_since + timeout
            if trio.current_time() >= deadline:
                break
            await trio.sleep_until(deadline)
        self._idled[id(endpoint)] = self._wake  # (a call that comes while it closes wakes the slot at once)
        self.dormant += 1
        log.info("pool.idle_closed", pool=self.name, endpoint=endpoint.name, seconds=timeout)
        endpoint.retire(f"no call for {timeout:g}s (idle timeout)")


class Outliers:
    """Passive health of one group's pools (Envoy's consecutive-failure outlier detection): a pool whose calls
    failed `consecutive_failures` times in a row is skipped for `eject_s`, unless that would eject more than
    `max_ejected_percent` of the group (one pool of two may always be ejected). Keyed by pool identity; pools
    that left the group are forgotten with it."""

    __slots__ = ("policy", "failures", "ejected", "ejections")

    def __init__(self, policy: OutlierConfig) -> None:
        self.policy = policy
        self.failures: dict[int, int] = {}  # id(pool) -> consecutive failures
        self.ejected: dict[int, float] = {}  # id(pool) -> until (trio time)
        self.ejections = 0

    def usable(self, pool: ConnectionPool, now: float) -> bool:
        until = self.ejected.get(id(pool))
        if until is None:
            return True
        if now < until:
            return False
        del self.ejected[id(pool)]  # back, on probation: its next failures count from zero
        self.failures.pop(id(pool), None)
        return True

    def report(self, pool: ConnectionPool, failed: bool, now: float, total: int) -> None:
        key = id(pool)
        if not failed:
            if key in self.failures:
                del self.failures[key]
            return
        count = self.failures.get(key, 0) + 1
        self.failures[key] = count
        policy = self.policy
        if count < policy.consecutive_failures or key in self.ejected:
            return
        allowed = max(1 if total > 1 else 0, total * policy.max_ejected_percent // 100)
        if len([1 for until in self.ejected.values() if until > now]) >= allowed:
            return
        self.ejected[key] = now + policy.eject_s
        self.failures.pop(key, None)
        self.ejections += 1
        trips.trip(trips.OUTLIER_EJECTION)
        log.warning("providers.ejected", pool=pool.name, failures=count, seconds=policy.eject_s)


UNTAGGED = ProviderTags()
ROUTES_KEPT = 256  # remembered routing results per group (and wants per router); beyond, they start afresh


class Router:
    """An export's routing stages over its providers (exports[].routing), each narrowing the candidates and never
    to none (a stage that would leave none is skipped: the next fallback is the wider set):

        target_zone   the zone the call names (x-interlink-target-zone)
        unit          the unit the call names (x-interlink-unit, or its user id by the site's unit_rule), else this
                      gateway's unit
        nearest       this gateway's zone (`zone:` in the site file)
        header rule   a call whose header has one of the rule's values: the providers of the rule's group
        weighted      a weighted random choice among what is left (else round robin)

    What a call wants of each stage is read from it once (`wants`: its header may be gone by a retry); the
    candidates are the pools that are up and not ejected (Outliers), narrowed stage by stage; with none, the
    group's plain pick decides (it knows what is connecting or full)."""

    __slots__ = ("stages", "zone", "unit", "weighted", "headers", "_wants")

    def __init__(self, stages: tuple[str | HeaderStage, ...], zone: str | None, unit: str | None) -> None:
        self.stages = tuple(stage for stage in stages if stage != "weighted")
        self.weighted = "weighted" in stages
        self.zone, self.unit = zone, unit
        self.headers = tuple(stage.header for stage in self.stages if isinstance(stage, HeaderStage))  # what to read
        self._wants: dict[tuple[str | None, str | None], tuple] = {}  # (zone, unit) -> wants, without header stages

    def wants(self, target_zone: str | None, unit: str | None, header: Callable[[str], str | None] | None
              ) -> tuple[tuple[str, str | None], ...]:
        """(tag field, wanted value or None: stage skipped) per stage, for one call. The same object for calls
        that want the same (remembered, bounded: the values are the callers')."""
        if self.headers:
            return self._wanted(target_zone, unit, header)
        key = (target_zone, unit)
        wants = self._wants.get(key)
        if wants is None:
            if len(self._wants) >= ROUTES_KEPT:
                self._wants.clear()
            wants = self._wants[key] = self._wanted(target_zone, unit, None)
        return wants

    def _wanted(self, target_zone: str | None, unit: str | None, header: Callable[[str], str | None] | None
                ) -> tuple[tuple[str, str | None], ...]:
        wants = []
        for stage in self.stages:
            if stage == "target_zone":
                wants.append(("zone", target_zone))
            elif stage == "unit":
                wants.append(("unit", unit or self.unit))
            elif stage == "nearest":
                wants.append(("zone", self.zone))
            else:
                value = header(stage.header) if header is not None else None  # type: ignore[union-attr]
                wants.append(("group", stage.group if value in stage.values else None))  # type: ignore[union-attr]
        return tuple(wants)

    def candidates(self, group: PoolGroup, wants: tuple[tuple[str, str | None], ...], every: bool = False
                   ) -> list[ConnectionPool]:
        """The pools the stages leave of those that are up and not ejected (`every`: of all, as if they were)."""
        outliers, tags = group.outliers, group.tags
        if every:
            pools = list(group.pools)
        else:
            now = trio.current_time() if outliers is not None else 0.0
            pools = [pool for pool in group.pools if pool.up and (outliers is None or outliers.usable(pool, now))]
        for field, wanted in wants:
            if wanted is None:
                continue
            narrowed = [pool for pool in pools if getattr(tags.get(id(pool), UNTAGGED), field) == wanted]
            if narrowed:
                pools = narrowed
        return pools

    def choose(self, group: PoolGroup, pools: list[ConnectionPool]) -> ConnectionPool:
        if self.weighted and len(pools) > 1:
            tags = group.tags
            weights = [tags.get(id(pool), UNTAGGED).weight for pool in pools]
            if sum(weights) > 0:
                return random.choices(pools, weights)[0]
        group._next = (group._next + 1) % len(pools)
        return pools[group._next]


class PoolGroup:
    """The pools of all addresses of one upstream (a peer site's gateways, an export's providers), picked
    round-robin; within a pool the least-loaded connection wins. With `outliers`, ejected pools are skipped
    (all of them ejected: none is, rather than failing every call)."""

    def __init__(self, name: str, pools: list[ConnectionPool]) -> None:
        self.name = name
        self.pools = pools
        self.outliers: Outliers | None = None
        self.router: Router | None = None  # routing stages (exports[].routing): pick_routed
        self.tags: dict[int, ProviderTags] = {}  # id(pool) -> where it runs and its weight (routing)
        self._next = 0
        # What the routing stages leave for each wants when every pool is up: (pools, tags, router, {wants: pools});
        # rebuilt when any of the three is replaced (a registry change, a reload).
        self._routes: tuple | None = None
        self.holders: dict[Hashable, int] = {}  # caller connection -> its calls in flight through this group
        self.held = 0  # all calls in flight through this group

    def capacity(self) -> int:
        """Call slots of the usable connections of this group."""
        total = 0  # (loops, not a generator: asked per call once a caller holds MIN_SHARE)
        for pool in self.pools:
            for endpoint in pool.endpoints:
                if endpoint.usable:
                    total += endpoint.slots
        return total

    def share(self, capacity: int | None = None) -> int:
        """How many calls one caller connection may have in flight through this group now."""
        capacity = self.capacity() if capacity is None else capacity
        return max(MIN_SHARE, capacity // max(1, len(self.holders)))

    def acquire(self, caller: Hashable) -> bool:
        """Count one more call of `caller`; False (nothing counted) when it already holds its share."""
        held = self.holders.get(caller, 0)
        if held >= MIN_SHARE:
            capacity = self.capacity()
            if held >= self.share(capacity) or capacity - self.held <= capacity // HEADROOM:
                return False
        self.holders[caller] = held + 1
        self.held += 1
        return True

    def release(self, caller: Hashable) -> None:
        held = self.holders.get(caller, 0) - 1
        if held < 0:
            return
        self.held -= 1
        if held > 0:
            self.holders[caller] = held
        else:
            del self.holders[caller]

    def pick(self, avoid: object = None) -> PooledConnection | None:
        """A connection of the next pool in turn that has room; `avoid` (a pool a retry failed on) and ejected
        pools only when no other has. A retry's pick does not take a turn: the next call goes where it would have."""
        pools = self.pools
        count = len(pools)
        outliers = self.outliers
        if count == 1 and outliers is None:  # one address: nothing to rotate
            return pools[0].pick()
        now = trio.current_time() if outliers is not None else 0.0
        skipped = False
        for offset in range(count):
            pool = pools[(self._next + offset) % count]
            if pool is avoid or (outliers is not None and not outliers.usable(pool, now)):
                skipped = True
                continue
            endpoint = pool.pick()
            if endpoint is not None:
                if avoid is None:  # (a retry's pick leaves the turn where it was)
                    self._next = (self._next + offset + 1) % count
                return endpoint
        if skipped:  # only ejected pools could take it: better them than nothing
            for pool in pools:
                endpoint = pool.pick()
                if endpoint is not None:
                    return endpoint
        return None

    def pick_routed(self, wants: tuple[tuple[str, str | None], ...], avoid: object = None) -> PooledConnection | None:
        """With routing stages: a connection of the provider they choose for what the call wants (Router.wants;
        another of the same candidates when that one is full; not `avoid` when another is a candidate); the
        plain pick when no provider is a candidate."""
        router = self.router
        assert router is not None
        routes = self._routes
        if routes is None or routes[0] is not self.pools or routes[1] is not self.tags or routes[2] is not router:
            routes = self._routes = (self.pools, self.tags, router, {})
        table = routes[3]
        pools = table.get(wants)
        if pools is None:
            if len(table) >= ROUTES_KEPT:
                table.clear()
            pools = table[wants] = router.candidates(self, wants, every=True)
        # When every pool the stages leave is up and not ejected, the stages over the pools that are give the same;
        # otherwise they are run again over those.
        if not self._usable(pools):
            pools = router.candidates(self, wants)
        if avoid is not None and len(pools) > 1:
            pools = [pool for pool in pools if pool is not avoid]
        if not pools:
            return self.pick(avoid)
        first = pools[0] if len(pools) == 1 else router.choose(self, pools)
        endpoint = first.pick()
        if endpoint is None:
            for pool in pools:
                endpoint = pool.pick()
                if endpoint is not None:
                    break
        return endpoint

    def _usable(self, pools: list[ConnectionPool]) -> bool:
        outliers = self.outliers
        ejected = outliers.ejected if outliers is not None else None
        for pool in pools:
            if not pool.up:
                return False
            if ejected and id(pool) in ejected and not outliers.usable(pool, trio.current_time()):  # type: ignore[union-attr]
                return False
        return True

    def outcome(self, connection: PooledConnection, failed: bool) -> None:
        """A call on `connection` of this group ended (`failed`: the upstream failed it); for outlier ejection."""
        outliers = self.outliers
        if not failed and (outliers is None or not outliers.failures):
            return  # a success with no failure streak to end: nothing to count
        pool = getattr(connection, "attributes", {}).get("pool")
        if outliers is not None and pool is not None:
            outliers.report(pool, failed, trio.current_time(), len(self.pools))

    @property
    def up(self) -> bool:
        return any(pool.up for pool in self.pools)

    @property
    def first_connect_pending(self) -> bool:
        """No connection has ever come up, and the pools started less than FIRST_CONNECT_WAIT ago (or have not
        started yet): calls wait for the first one, whether an attempt is under way or backing off."""
        return not any(pool.ever_connected for pool in self.pools) and self.first_wait_until() > trio.current_time()

    def first_wait_until(self) -> float:
        """Until when calls wait for the first connection (FIRST_CONNECT_WAIT after the pools started)."""
        starts = [pool.started_at for pool in self.pools]
        if not starts or None in starts:
            return trio.current_time() + FIRST_CONNECT_WAIT  # (a pool not started yet: its window is ahead)
        return max(starts) + FIRST_CONNECT_WAIT  # type: ignore[type-var]

    @property
    def connecting(self) -> bool:
        """A connection is being made right now (startup, a replacement, a reconnect)."""
        return any(pool.connecting for pool in self.pools)

    @property
    def waking(self) -> bool:
        """A pool that was dormant (idle timeout) is connecting again because a call needs it."""
        return any(pool.waking for pool in self.pools)

    async def wait_settled(self) -> None:
        """Until a connection is up, or no connection attempt is in progress any more (then it failed); and
        until no dormant pool is still waking up."""
        while (not self.up and self.connecting) or self.waking:
            await trio.sleep(0.005)

    @property
    def last_error(self) -> str:
        return "; ".join(f"{pool.name}: {pool.last_error}" for pool in self.pools if not pool.up) or "no address"

    async def wait_ready(self) -> None:
        async with trio.open_nursery() as nursery:
            for pool in self.pools:
                nursery.start_soon(self._first_ready, pool, nursery.cancel_scope)

    @staticmethod
    async def _first_ready(pool: ConnectionPool, scope: trio.CancelScope) -> None:
        await pool.wait_ready()
        scope.cancel()
