"""Where webhook deliveries live: the SQLite journal (one instance) or Redis (many instances).

`WebhookDispatcher` (service/webhooks/dispatcher.py) does the HTTP, signing and backoff; it keeps its
deliveries through a `DeliveryStore`, chosen by the app factory with the job
store it runs with.

SQLite: the `webhook_deliveries` table in the journal, next to `jobs`; one process owns it.

Redis, under the job store's key prefix P (all webhook keys under P:webhook:):

    P:webhook:d:<delivery_id>          hash: the delivery (the SQLite row's columns as strings,
                                       absent for NULL) plus `claim`, the token of the attempt
                                       in flight
    P:webhook:due                      sorted set: pending delivery ids by when they are due
                                       (seconds on Redis' clock); a claimed one's score is its
                                       claim's expiry
    P:webhook:once:<job_id>:<ended_at> string: the delivery id of that ending of the job
                                       (`ended_at` is the job hash's completed_at as stored),
                                       set with NX so only one delivery is ever recorded for it
    P:webhook:job:<job_id>             sorted set: the job's delivery ids by created_at
    P:webhook:ended                    sorted set: delivery ids by job_ended_at (retention)

It reads, and never writes, the job store's P:job:<job_id> hashes and P:ended sorted set.
Claiming is one Lua script: the due deliveries move to now + claim lease and get a fresh
token, so of several instances exactly one attempts a delivery at a time; the claim lease is
longer than an attempt may take, so a claim whose instance died just expires and the delivery
falls due again. A result is recorded only by the holder of the current claim (or, for a
final state, by whoever gets there first), and a finished delivery is never made pending again.
Redis' clock times the due set, so instance clocks need not agree on it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import StoreUnavailable
from service.jobs.job import JobStatus, iso_time
from service.jobs.view import WEBHOOK_EVENTS, WebhookSnapshot

T = TypeVar("T")

PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "given_up"
_FINISHED = tuple(status.value for status in WEBHOOK_EVENTS)
# A claim outlives the attempt it covers by this much (reading the transcript, recording).
CLAIM_MARGIN_SECONDS = 30.0
# The claim lease for the default --webhook-timeout (10 s); the dispatcher passes its own.
DEFAULT_CLAIM_LEASE_SECONDS = 10.0 + CLAIM_MARGIN_SECONDS
# Jobs read per round trip when reconciling, and deliveries looked at per retention pass.
_BATCH = 500


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    job_id: str
    job_ended_at: float
    url: str
    payload: dict[str, Any]
    attempts: int
    claim: str | None = None  # Redis: the token of this attempt's claim


class DeliveryStore(Protocol):
    """Persistence of webhook deliveries; every method may raise when the store is unreachable."""

    async def setup(self) -> None:
        """Create what the store needs (tables, scripts); before any other call."""

    async def record_ending(self, job_id: str) -> str | None:
        """A pending delivery for the job's current ending, if it has a callback_url and none yet.

        The new delivery's id, or None (no such job ending, no callback_url, already recorded).
        """

    async def reconcile(self, since: float, keep_s: float) -> int:
        """Add deliveries for jobs that ended at or after `since` without one; how many added.

        With keep_s > 0, also delete finished deliveries of jobs that ended over keep_s ago.
        """

    async def due(self, busy: Collection[str], room: int) -> tuple[list[Delivery], float | None]:
        """Up to `room` pending deliveries due now, none of `busy`, each now this caller's to
        attempt; and when the next one falls due (None: none pending, or `room` filled)."""

    async def record(
        self,
        delivery: Delivery,
        attempt: int,
        state: str,
        status: int | None,
        error: str | None,
        retry_at: float | None = None,
    ) -> None:
        """The outcome of attempt number `attempt`: PENDING again (due at retry_at), or final."""

    async def release(self, deliveries: Collection[Delivery]) -> None:
        """Abandoned attempts (shutdown): due again now rather than when their claims expire."""

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's deliveries, oldest first, as dicts of the SQLite row's columns."""


class SqlJournal(Protocol):
    """What the SQLite store needs of service.journal.SqliteJobStore."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class RedisKeyspace(Protocol):
    """What the Redis store needs of the Redis job store: its client and its key prefix."""

    @property
    def redis(self) -> Any: ...  # a redis.asyncio.Redis made with decode_responses=True

    def key(self, *parts: str) -> str: ...


def snapshot(row: tuple[Any, ...]) -> dict[str, Any]:
    """The job's part of the payload, fixed when the job ends (the row may change or go later).

    `row`: job_id, status, model, language, duration_s, created_at, completed_at, error, callback_url.
    The shape is the job view's (`service.jobs.view.WebhookSnapshot`).
    """
    job_id, status, model, language, duration_s, created_at, completed_at, error, _ = row
    ended = JobStatus(status)
    return WebhookSnapshot(
        event=WEBHOOK_EVENTS[ended],
        job_id=job_id,
        status=ended,
        model=model,
        language=language,
        duration_s=round(duration_s, 3) if duration_s is not None else None,  # as /status has it
        # An ended job has both times; were one missing, the ending is still reported, as now.
        created_at=iso_time(created_at) or iso_time(time.time()) or "",
        completed_at=iso_time(completed_at) or iso_time(time.time()) or "",
        error=error if ended is JobStatus.FAILED else None,
    ).body()


# -- SQLite -----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    job_ended_at REAL NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (job_id, job_ended_at)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
"""
_JOB_COLUMNS = "job_id, status, model, language, duration_s, created_at, completed_at, error, callback_url"
_LISTED = (
    "delivery_id",
    "job_id",
    "url",
    "state",
    "attempts",
    "next_attempt_at",
    "last_status",
    "last_error",
    "created_at",
    "finished_at",
)


def _insert(conn: sqlite3.Connection, row: tuple[Any, ...], now: float) -> str | None:
    """A pending delivery for this ending of the job, unless it has one; the new id or None."""
    delivery_id = uuid.uuid4().hex
    inserted = conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, job_id, job_ended_at, url, payload, "
        "state, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (delivery_id, row[0], row[6], row[8], json.dumps(snapshot(row)), PENDING, now, now),
    ).rowcount
    return delivery_id if inserted else None


class SqliteDeliveryStore:
    """The `webhook_deliveries` table of the SQLite journal (one process: nothing to claim)."""

    def __init__(self, journal: SqlJournal) -> None:
        self.journal = journal

    async def setup(self) -> None:
        await self.journal.run(lambda conn: conn.executescript(_SCHEMA))

    async def record_ending(self, job_id: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND callback_url IS NOT NULL "
                f"AND completed_at IS NOT NULL AND status IN ({', '.join('?' for _ in _FINISHED)})",
                (job_id, *_FINISHED),
            ).fetchone()
            return _insert(conn, row, time.time()) if row else None

        return await self.journal.run(op)

    async def reconcile(self, since: float, keep_s: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({', '.join('?' for _ in _FINISHED)}) "
                "AND completed_at >= ? AND callback_url IS NOT NULL AND NOT EXISTS ("
                "SELECT 1 FROM webhook_deliveries d WHERE d.job_id = jobs.job_id "
                "AND d.job_ended_at = jobs.completed_at)",
                (*_FINISHED, since),
            ).fetchall()
            now = time.time()
            if keep_s > 0:  # finished rows go with the jobs they belong to (retention)
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE state != ? AND job_ended_at < ?",
                    (PENDING, now - keep_s),
                )
            return sum(_insert(conn, row, now) is not None for row in rows)

        return await self.journal.run(op)

    async def due(self, busy: Collection[str], room: int) -> tuple[list[Delivery], float | None]:
        busy = set(busy)

        def op(conn: sqlite3.Connection) -> tuple[list[Delivery], float | None]:
            rows = conn.execute(
                "SELECT delivery_id, job_id, job_ended_at, url, payload, attempts, next_attempt_at "
                "FROM webhook_deliveries WHERE state = ? ORDER BY next_attempt_at LIMIT ?",
                (PENDING, len(busy) + room + 1),
            )
            due: list[Delivery] = []
            now = time.time()
            for delivery_id, job_id, ended_at, url, payload, attempts, next_at in rows:
                if delivery_id in busy:
                    continue
                if len(due) >= room:
                    return due, None  # full: an attempt that ends wakes the loop
                if next_at > now:
                    return due, next_at
                due.append(Delivery(delivery_id, job_id, ended_at, url, json.loads(payload), attempts))
            return due, None

        return await self.journal.run(op)

    async def record(
        self,
        delivery: Delivery,
        attempt: int,
        state: str,
        status: int | None,
        error: str | None,
        retry_at: float | None = None,
    ) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, last_status = ?, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), finished_at = ? WHERE delivery_id = ?",
                (
                    state,
                    attempt,
                    status,
                    error,
                    retry_at,
                    None if state == PENDING else now,
                    delivery.delivery_id,
                ),
            )

        await self.journal.run(op)

    async def release(self, deliveries: Collection[Delivery]) -> None:
        """Nothing to do: an abandoned row is still pending and due."""

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = conn.execute(
                f"SELECT {', '.join(_LISTED)} FROM webhook_deliveries WHERE job_id = ? ORDER BY created_at",
                (job_id,),
            )
            return [dict(zip(_LISTED, row, strict=True)) for row in cursor.fetchall()]

        return await self.journal.run(op)


# -- Redis ------------------------------------------------------------------------------------

# Redis' clock, in seconds (float) for the due set.
_LUA_NOW = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: once, delivery hash, due, job index, ended index.
# ARGV: delivery_id, created_at, then the hash's field, value pairs.
# Returns 1 when recorded, 0 when this ending already has a delivery.
_INSERT = (
    _LUA_NOW
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
local ended = redis.call('HGET', KEYS[2], 'job_ended_at')
redis.call('ZADD', KEYS[3], now_s(), ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ended, ARGV[1])
return 1
"""
)

# KEYS: due. ARGV: delivery hash key prefix, room, claim lease (s), token, then busy ids.
# Claims up to `room` due deliveries (not busy): their due score becomes now + lease and their
# `claim` the token. Returns {now, next due score or '', then 6 fields per claimed delivery}.
_CLAIM = (
    _LUA_NOW
    + """
local dp, room, lease, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local busy = {}
for i = 5, #ARGV do busy[ARGV[i]] = true end
local now = now_s()
local out = {string.format('%.6f', now), ''}
local claimed = 0
if room > 0 then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, room + #ARGV - 4)
  for _, id in ipairs(ids) do
    if claimed < room and not busy[id] then
      local h = dp .. id
      local f = redis.call('HMGET', h, 'delivery_id', 'job_id', 'job_ended_at', 'url', 'payload',
        'attempts', 'state')
      if not f[1] or f[7] ~= 'pending' then
        redis.call('ZREM', KEYS[1], id)  -- gone, or finished: nothing to attempt
      else
        redis.call('ZADD', KEYS[1], now + lease, id)
        redis.call('HSET', h, 'claim', token)
        claimed = claimed + 1
        for j = 1, 6 do out[#out + 1] = f[j] or '' end
      end
    end
  end
end
if claimed < room then
  local head = redis.call('ZRANGE', KEYS[1], 0, #ARGV - 4, 'WITHSCORES')
  for i = 1, #head, 2 do
    if not busy[head[i]] then
      out[2] = head[i + 1]
      break
    end
  end
end
return out
"""
)

# KEYS: delivery hash, due. ARGV: delivery_id, token, state, attempts, last_status, last_error,
# retry delay (s, for pending), next_attempt_at (for pending), finished_at (for final states);
# '' for a status or error stands for none. Returns 1 when recorded, 0 when not (the delivery is
# gone or finished, or, for pending, another claim has replaced this one).
_RECORD = (
    _LUA_NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'claim')
if f[1] ~= 'pending' then return 0 end
local pending = ARGV[3] == 'pending'
if pending and f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'attempts', ARGV[4])
for i, name in ipairs({'last_status', 'last_error'}) do
  if ARGV[4 + i] == '' then redis.call('HDEL', KEYS[1], name)
  else redis.call('HSET', KEYS[1], name, ARGV[4 + i]) end
end
redis.call('HDEL', KEYS[1], 'claim')
if pending then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[8])
  redis.call('ZADD', KEYS[2], now_s() + math.max(0, tonumber(ARGV[7])), ARGV[1])
else
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[9])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""
)

# KEYS: due. ARGV: delivery hash key prefix, then delivery_id, token pairs.
# Still-claimed (by that token) pending deliveries fall due now. Returns how many.
_RELEASE = (
    _LUA_NOW
    + """
local now, count = now_s(), 0
for i = 2, #ARGV, 2 do
  local h = ARGV[1] .. ARGV[i]
  local f = redis.call('HMGET', h, 'state', 'claim')
  if f[1] == 'pending' and f[2] == ARGV[i + 1] then
    redis.call('HDEL', h, 'claim')
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    count = count + 1
  end
end
return count
"""
)

# KEYS: ended index, due. ARGV: key prefix (P:webhook:), ended before, offset, limit.
# Deletes finished deliveries of jobs that ended before the cut-off, with their uniqueness
# keys and index entries. Returns {looked at, deleted}.
_RETENTION = """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', ARGV[3], ARGV[4])
local deleted = 0
for _, id in ipairs(ids) do
  local h = p .. 'd:' .. id
  local f = redis.call('HMGET', h, 'state', 'job_id', 'once')
  if f[1] ~= 'pending' then
    redis.call('DEL', h)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if f[2] then redis.call('ZREM', p .. 'job:' .. f[2], id) end
    if f[3] and redis.call('GET', f[3]) == id then redis.call('DEL', f[3]) end
    deleted = deleted + 1
  end
end
return {#ids, deleted}
"""

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _job_row(fields: Mapping[str, str]) -> tuple[Any, ...] | None:
    """A job hash as the SQLite store's job row, if the job ended with a callback_url."""
    if (
        fields.get("status") not in _FINISHED
        or not fields.get("callback_url")
        or _float(fields.get("completed_at")) is None
        or _float(fields.get("created_at")) is None
    ):
        return None
    return (
        fields.get("job_id"),
        fields["status"],
        fields.get("model"),
        fields.get("language"),
        _float(fields.get("duration_s")),
        _float(fields["created_at"]),
        _float(fields["completed_at"]),
        fields.get("error"),
        fields["callback_url"],
    )


class RedisDeliveryStore:
    """Deliveries in Redis, shared by every instance; see the module's docstring for the layout."""

    def __init__(self, journal: RedisKeyspace, claim_lease_s: float) -> None:
        if claim_lease_s <= 0:
            raise ValueError("the claim lease must be positive")
        self.journal = journal
        self.redis = journal.redis
        self.claim_lease_s = claim_lease_s
        self._scripts: dict[str, Any] = {}

    # -- keys -------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return self.journal.key("webhook", *parts)

    def _delivery_key(self, delivery_id: str) -> str:
        return self._key("d", delivery_id)

    def _once_key(self, job_id: str, completed_at: str) -> str:
        return self._key("once", job_id, completed_at)

    # -- plumbing ---------------------------------------------------------------------------
    async def _call(self, pending: Awaitable[T]) -> T:
        """Redis unreachable becomes StoreUnavailable: the dispatcher logs it and tries again."""
        try:
            return await pending
        except _DOWN as exc:
            raise StoreUnavailable(f"webhooks: Redis cannot be reached: {exc}") from exc

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts[name]
        return await self._call(script(keys=keys, args=args))

    async def setup(self) -> None:
        self._scripts = {
            name: self.redis.register_script(source)
            for name, source in (
                ("insert", _INSERT),
                ("claim", _CLAIM),
                ("record", _RECORD),
                ("release", _RELEASE),
                ("retention", _RETENTION),
            )
        }

    async def _insert(self, fields: Mapping[str, str], row: tuple[Any, ...], now: float) -> str | None:
        job_id, ended_raw = row[0], fields["completed_at"]
        delivery_id = uuid.uuid4().hex
        once = self._once_key(job_id, ended_raw)
        values: dict[str, Any] = {
            "delivery_id": delivery_id,
            "job_id": job_id,
            "job_ended_at": repr(row[6]),
            "url": row[8],
            "payload": json.dumps(snapshot(row)),
            "state": PENDING,
            "attempts": 0,
            "next_attempt_at": repr(now),
            "created_at": repr(now),
            "once": once,
        }
        flat = [item for pair in values.items() for item in pair]
        keys = [
            once,
            self._delivery_key(delivery_id),
            self._key("due"),
            self._key("job", job_id),
            self._key("ended"),
        ]
        inserted = await self._script("insert", keys, [delivery_id, repr(now), *flat])
        return delivery_id if inserted else None

    # -- the protocol -----------------------------------------------------------------------
    async def record_ending(self, job_id: str) -> str | None:
        fields: dict[str, str] = await self._call(self.redis.hgetall(self.journal.key("job", job_id)))
        row = _job_row(fields)
        return await self._insert(fields, row, time.time()) if row else None

    async def reconcile(self, since: float, keep_s: float) -> int:
        added = 0
        ended_key = self.journal.key("ended")
        offset = 0
        while True:
            ids: list[str] = await self._call(
                self.redis.zrangebyscore(ended_key, since, "+inf", start=offset, num=_BATCH)
            )
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.journal.key("job", job_id))
                jobs: list[dict[str, str]] = await self._call(pipe.execute())
            candidates = [(fields, row) for fields in jobs if (row := _job_row(fields)) is not None]
            if candidates:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for fields, row in candidates:
                        pipe.exists(self._once_key(row[0], fields["completed_at"]))
                    exists: list[int] = await self._call(pipe.execute())
                now = time.time()
                for (fields, row), present in zip(candidates, exists, strict=True):
                    if not present and await self._insert(fields, row, now) is not None:
                        added += 1
            if len(ids) < _BATCH:
                break
            offset += len(ids)
        if keep_s > 0:  # finished deliveries go with the jobs they belong to (retention)
            await self._retention(time.time() - keep_s)
        return added

    async def _retention(self, ended_before: float) -> int:
        deleted, offset = 0, 0
        while True:
            looked, gone = await self._script(
                "retention",
                [self._key("ended"), self._key("due")],
                [self._key(""), repr(ended_before), offset, _BATCH],
            )
            deleted += int(gone)
            if int(looked) < _BATCH:
                return deleted
            offset += int(looked) - int(gone)  # the pending ones stay: look past them

    async def due(self, busy: Collection[str], room: int) -> tuple[list[Delivery], float | None]:
        token = uuid.uuid4().hex
        reply: list[str] = await self._script(
            "claim",
            [self._key("due")],
            [self._delivery_key(""), max(room, 0), repr(self.claim_lease_s), token, *busy],
        )
        redis_now, next_score, flat = float(reply[0]), reply[1], reply[2:]
        due = [
            Delivery(
                delivery_id=flat[i],
                job_id=flat[i + 1],
                job_ended_at=float(flat[i + 2]),
                url=flat[i + 3],
                payload=json.loads(flat[i + 4]),
                attempts=int(flat[i + 5] or 0),
                claim=token,
            )
            for i in range(0, len(flat), 6)
        ]
        # Scores are on Redis' clock; the dispatcher sleeps on this instance's.
        next_at = time.time() + (float(next_score) - redis_now) if next_score != "" else None
        return due, next_at

    async def record(
        self,
        delivery: Delivery,
        attempt: int,
        state: str,
        status: int | None,
        error: str | None,
        retry_at: float | None = None,
    ) -> None:
        now = time.time()
        retry_at = now if retry_at is None else retry_at
        await self._script(
            "record",
            [self._delivery_key(delivery.delivery_id), self._key("due")],
            [
                delivery.delivery_id,
                delivery.claim or "",
                state,
                attempt,
                "" if status is None else status,
                error or "",
                repr(retry_at - now),
                repr(retry_at),
                repr(now),
            ],
        )

    async def release(self, deliveries: Collection[Delivery]) -> None:
        pairs = [item for d in deliveries if d.claim for item in (d.delivery_id, d.claim)]
        if pairs:
            await self._script("release", [self._key("due")], [self._delivery_key(""), *pairs])

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        ids: list[str] = await self._call(self.redis.zrange(self._key("job", job_id), 0, -1))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._delivery_key(delivery_id))
            hashes: list[dict[str, str]] = await self._call(pipe.execute())
        return [
            {
                "delivery_id": h["delivery_id"],
                "job_id": h["job_id"],
                "url": h["url"],
                "state": h["state"],
                "attempts": int(h.get("attempts") or 0),
                "next_attempt_at": _float(h.get("next_attempt_at")),
                "last_status": _int(h.get("last_status")),
                "last_error": h.get("last_error"),
                "created_at": _float(h.get("created_at")),
                "finished_at": _float(h.get("finished_at")),
            }
            for h in hashes
            if h  # deleted since the index was read
        ]
