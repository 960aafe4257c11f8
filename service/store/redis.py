"""Job state and the queue in Redis, shared by every service instance (`--backend redis`).

Layout, under a key prefix P (`--redis-prefix`):

    P:job:<id>          hash: the job's fields (as in `jobs.Job`), plus the running claim's
                        `lease` token and `owner` instance
    P:seq               counter: arrival order, one number per accepted upload
    P:all               sorted set: every job id by seq (listing, newest first)
    P:st:<status>       sorted set per status: job ids by seq (P:st:queued is the queue)
    P:leases            sorted set: running job ids by lease expiry (ms of Redis' clock)
    P:ended             sorted set: finished job ids by completion time (retention, webhooks)
    P:cache:<key>       string: the newest completed job with that transcript-cache key

Delivery is at least once and completes once. A claim (one Lua script: pick by effective
priority, move to processing, count the attempt) is a lease the claiming instance renews while
it decodes. An instance that dies stops renewing; any instance's sweep then finds the expired
lease and puts the job back in the queue, or fails it past the attempt limit, so attempts and
the crash limit hold across instances. Every write that ends a run checks the lease token: of
two workers that raced for a job (one presumed dead, then back), only the lease holder's result
is recorded.

Redis' clock times leases, so instance clocks need not agree on them; wall-clock fields
(created_at, started_at, completed_at) come from the instances, as the API shows them.
When Redis cannot be reached, calls raise `StoreUnavailable` (503); writes that end a run retry
for a while first, so a Redis restart does not lose a finished transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.backoff import Backoff
from service.errors import StoreUnavailable
from service.jobs.job import URGENT, Job, JobOptions, JobStatus, NewJob, Task, effective_priority
from service.store.base import JobExists, QueueAtLimit
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
# Replies meaning Redis is up but refuses writes for now (a failing RDB save, maxmemory, a
# replica, still loading): they clear by themselves, so they count as an outage, not a bug.
_REFUSING = ("MISCONF", "OOM", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY")


def _refusing(exc: ResponseError) -> bool:
    """Also inside a script's error (`... script: ... OOM command not allowed ...`)."""
    words = str(exc).replace(":", " ").split()
    return any(word in _REFUSING for word in words)


# Writes that end a run retry this long while Redis is away (a restart), then give up: the
# lease then expires and the job runs again, so nothing is lost.
END_WRITE_RETRY_SECONDS = 120.0
# Between those retries: doubling from the first pause up to the cap.
END_WRITE_BACKOFF_SECONDS = 0.25
END_WRITE_BACKOFF_CAP_SECONDS = 2.0
_CRASHED = (
    "The worker crashed on this job {attempts} times; giving up. "
    "The audio may be malformed or too large for this machine."
)

# Helpers shared by the scripts: Redis' clock in ms, and a job's move between status sets.
_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function move(p, id, seq, from, to)
  redis.call('ZREM', p .. ':st:' .. from, id)
  redis.call('ZADD', p .. ':st:' .. to, seq, id)
end
local function finish(p, id, seq, from, to, at)
  move(p, id, seq, from, to)
  redis.call('DEL', p .. ':checkpoints:' .. id)
  redis.call('ZREM', p .. ':leases', id)
  redis.call('ZADD', p .. ':ended', at, id)
end
local function requeue_or_fail(p, jk, id, max_attempts, at, message)
  local f = redis.call('HMGET', jk, 'seq', 'attempts')
  local attempts = tonumber(f[2]) or 0
  redis.call('ZREM', p .. ':leases', id)
  redis.call('HDEL', jk, 'lease', 'owner')
  if attempts >= max_attempts then
    redis.call('HSET', jk, 'status', 'failed', 'completed_at', at,
      'error', (string.gsub(message, '{attempts}', tostring(attempts))))
    finish(p, id, f[1], 'processing', 'failed', at)
    return 2
  end
  redis.call('HSET', jk, 'status', 'queued', 'progress', '0')
  redis.call('HDEL', jk, 'started_at')
  move(p, id, f[1], 'processing', 'queued')
  return 1
end
"""

# ARGV: prefix, job_id, mode (new | retry | completed), now, max queued (0: no limit), then
# field, value pairs. Returns the new seq, -1 when the id is taken (by a job that may not be
# replaced), or -2 - (jobs queued) when the queue is at its limit; then nothing changed.
_INSERT = (
    _LUA_COMMON
    + """
local p, id, mode, now, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local jk = p .. ':job:' .. id
local old = redis.call('HGET', jk, 'status')
if mode ~= 'completed' and limit > 0 then
  local queued = redis.call('ZCARD', p .. ':st:queued')
  if queued >= limit and not (old and mode == 'new') then return -2 - queued end
end
if old then
  if mode == 'new' or (old ~= 'failed' and old ~= 'cancelled') then return -1 end
  redis.call('ZREM', p .. ':st:' .. old, id)
  redis.call('ZREM', p .. ':ended', id)
  redis.call('ZREM', p .. ':all', id)
  redis.call('DEL', jk)
elseif mode == 'retry' then
  return -1
end
local seq = redis.call('INCR', p .. ':seq')
local status = 'queued'
if mode == 'completed' then status = 'completed' end
redis.call('HSET', jk, 'job_id', id, 'seq', seq, 'status', status, 'created_at', now,
  'progress', '0', 'attempts', '0')
for i = 6, #ARGV, 2 do redis.call('HSET', jk, ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', p .. ':all', seq, id)
redis.call('ZADD', p .. ':st:' .. status, seq, id)
if mode == 'completed' then
  redis.call('HSET', jk, 'progress', '1', 'started_at', now, 'completed_at', now)
  redis.call('ZADD', p .. ':ended', now, id)
  local key = redis.call('HGET', jk, 'cache_key')
  if key then redis.call('SET', p .. ':cache:' .. key, id) end
end
return seq
"""
)

# ARGV: prefix, now, aging_s, ceiling, patience_s, lease_ms, token, owner, preferred models...
# Picks like the SQLite journal: effective priority down, then arrival; a job for a loaded
# model of the same or higher priority may overtake while the first has waited < patience.
_CLAIM = (
    _LUA_COMMON
    + """
local p = ARGV[1]
local now, aging, ceiling = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local patience, lease_ms, token, owner = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local prefer, nprefer = {}, 0
for i = 9, #ARGV do prefer[ARGV[i]] = true; nprefer = nprefer + 1 end
local ids = redis.call('ZRANGE', p .. ':st:queued', 0, -1)
local jobs = {}
local best = nil
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', p .. ':job:' .. id, 'priority', 'created_at', 'model')
  local pri = tonumber(f[1]) or 0
  local created = tonumber(f[2]) or now
  local e = math.max(pri, math.min(pri + (now - created) / aging, ceiling))
  local job = {id = id, e = e, pri = pri, created = created, model = f[3]}
  jobs[#jobs + 1] = job
  if best == nil or e > best.e then best = job end
end
if best == nil then return false end
if nprefer > 0 and not prefer[best.model] and now - best.created < patience then
  local alt = nil
  for _, job in ipairs(jobs) do
    if job.pri >= best.pri and prefer[job.model] and (alt == nil or job.e > alt.e) then alt = job end
  end
  if alt then best = alt end
end
local jk = p .. ':job:' .. best.id
local seq = redis.call('HGET', jk, 'seq')
move(p, best.id, seq, 'queued', 'processing')
redis.call('HSET', jk, 'status', 'processing', 'started_at', ARGV[2], 'progress', '0',
  'lease', token, 'owner', owner)
redis.call('HINCRBY', jk, 'attempts', 1)
redis.call('ZADD', p .. ':leases', now_ms() + lease_ms, best.id)
return redis.call('HGETALL', jk)
"""
)

# ARGV: prefix, lease_ms, then job_id, token pairs. One answer per job: ok, cancelled or lost.
_RENEW = """
local p, lease_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
local out = {}
for i = 3, #ARGV, 2 do
  local f = redis.call('HMGET', p .. ':job:' .. ARGV[i], 'status', 'lease')
  if f[2] ~= ARGV[i + 1] then
    out[#out + 1] = 'lost'
  elseif f[1] == 'processing' then
    redis.call('ZADD', p .. ':leases', until_ms, ARGV[i])
    out[#out + 1] = 'ok'
  elseif f[1] == 'cancelled' then
    out[#out + 1] = 'cancelled'
  else
    out[#out + 1] = 'lost'
  end
end
return out
"""

# ARGV: prefix, job_id, token ('' when none is held: then only a queued job can fail), action,
# now, max_attempts, message, field/value pairs...
# Actions: complete, fail, release, crashed. Returns 0 when the job is not (or no longer) this
# holder's running job; else 1 (2: crashed past the limit, failed).
_END_RUN = (
    _LUA_COMMON
    + """
local p, id, token, action, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = p .. ':job:' .. id
local f = redis.call('HMGET', jk, 'status', 'lease', 'seq', 'attempts', 'cache_key')
if f[1] ~= 'processing' or f[2] ~= token then
  if action == 'fail' and f[1] == 'queued' and token == '' then
    redis.call('HSET', jk, 'status', 'failed', 'completed_at', now, 'error', ARGV[7])
    finish(p, id, f[3], 'queued', 'failed', now)
    return 1
  end
  return 0
end
if action == 'complete' then
  redis.call('HSET', jk, 'status', 'completed', 'progress', '1', 'completed_at', now)
  redis.call('HDEL', jk, 'error', 'lease', 'owner')
  for i = 8, #ARGV, 2 do redis.call('HSET', jk, ARGV[i], ARGV[i + 1]) end
  finish(p, id, f[3], 'processing', 'completed', now)
  if f[5] then redis.call('SET', p .. ':cache:' .. f[5], id) end
  return 1
elseif action == 'fail' then
  redis.call('HSET', jk, 'status', 'failed', 'completed_at', now, 'error', ARGV[7])
  redis.call('HDEL', jk, 'lease', 'owner')
  finish(p, id, f[3], 'processing', 'failed', now)
  return 1
elseif action == 'release' then
  local attempts = math.max((tonumber(f[4]) or 0) - 1, 0)
  redis.call('HSET', jk, 'status', 'queued', 'progress', '0', 'attempts', attempts)
  redis.call('HDEL', jk, 'started_at', 'lease', 'owner')
  redis.call('ZREM', p .. ':leases', id)
  move(p, id, f[3], 'processing', 'queued')
  return 1
elseif action == 'crashed' then
  return requeue_or_fail(p, jk, id, tonumber(ARGV[6]), now, ARGV[7])
end
return 0
"""
)

# ARGV: prefix, now, max_attempts, message, charge (1: the run counts as an attempt).
# Expired leases: back to the queue or failed. Returns {requeued ids..., '|', failed ids...}.
_RECLAIM = (
    _LUA_COMMON
    + """
local p, now, max_attempts, message = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local charge = ARGV[5] == '1'
local expired = redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', now_ms(), 'LIMIT', 0, 100)
local requeued, failed = {}, {}
for _, id in ipairs(expired) do
  local jk = p .. ':job:' .. id
  if redis.call('HGET', jk, 'status') == 'processing' then
    if not charge and (tonumber(redis.call('HGET', jk, 'attempts')) or 0) > 0 then
      redis.call('HINCRBY', jk, 'attempts', -1)
    end
    if requeue_or_fail(p, jk, id, max_attempts, now, message) == 2 then
      failed[#failed + 1] = id
    else
      requeued[#requeued + 1] = id
    end
  else
    redis.call('ZREM', p .. ':leases', id)
  end
end
local out = requeued
out[#out + 1] = '|'
for _, id in ipairs(failed) do out[#out + 1] = id end
return out
"""
)

# ARGV: prefix, job_id, now. Returns the job's fields as they were, or nothing.
_CANCEL = (
    _LUA_COMMON
    + """
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local jk = p .. ':job:' .. id
local before = redis.call('HGETALL', jk)
local f = redis.call('HMGET', jk, 'status', 'seq')
if f[1] == 'queued' or f[1] == 'processing' then
  redis.call('HSET', jk, 'status', 'cancelled', 'completed_at', now)
  redis.call('HDEL', jk, 'error')
  finish(p, id, f[2], f[1], 'cancelled', now)
end
return before
"""
)

# ARGV: prefix, job_id. Removes a finished job's keys; 1 when removed.
_DELETE_FINISHED = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. ':job:' .. id
local f = redis.call('HMGET', jk, 'status', 'cache_key')
if f[1] ~= 'completed' and f[1] ~= 'failed' and f[1] ~= 'cancelled' then return 0 end
if f[2] and redis.call('GET', p .. ':cache:' .. f[2]) == id then
  redis.call('DEL', p .. ':cache:' .. f[2])
end
redis.call('ZREM', p .. ':st:' .. f[1], id)
redis.call('ZREM', p .. ':ended', id)
redis.call('ZREM', p .. ':all', id)
redis.call('DEL', jk, p .. ':checkpoints:' .. id)
return 1
"""

# ARGV: prefix, job_id, progress. Only a running job's progress moves.
_PROGRESS = """
local jk = ARGV[1] .. ':job:' .. ARGV[2]
if redis.call('HGET', jk, 'status') == 'processing' then redis.call('HSET', jk, 'progress', ARGV[3]) end
return 1
"""

# ARGV: prefix, job_id, token, field, checkpoint json, transcribed_s. 1 when kept; 0 when the
# job is not (or no longer) this holder's running job.
_CHECKPOINT = """
local p, id = ARGV[1], ARGV[2]
local jk = p .. ':job:' .. id
local f = redis.call('HMGET', jk, 'status', 'lease')
if f[1] ~= 'processing' or f[2] ~= ARGV[3] then return 0 end
redis.call('HSET', p .. ':checkpoints:' .. id, ARGV[4], ARGV[5])
redis.call('HSET', jk, 'transcribed_s', ARGV[6])
return 1
"""

# ARGV: prefix, priority, created_at, seq, now, aging_s, ceiling. 1 when a queued job would be
# claimed before a job with these values.
_OUTRANKED = """
local p, pri, created, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, aging, ceiling = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function eff(pr, c) return math.max(pr, math.min(pr + (now - c) / aging, ceiling)) end
local mine = eff(pri, created)
local ids = redis.call('ZRANGE', p .. ':st:queued', 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local f = redis.call('HMGET', p .. ':job:' .. ids[i], 'priority', 'created_at')
  local e = eff(tonumber(f[1]) or 0, tonumber(f[2]) or now)
  if e > mine or (e == mine and tonumber(ids[i + 1]) < seq) then return 1 end
end
return 0
"""

# ARGV: prefix, seq, now, aging_s, ceiling. 1 for the job that runs next.
_POSITION = """
local p, seq = ARGV[1], tonumber(ARGV[2])
local now, aging, ceiling = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function eff(pri, created) return math.max(pri, math.min(pri + (now - created) / aging, ceiling)) end
local ids = redis.call('ZRANGE', p .. ':st:queued', 0, -1, 'WITHSCORES')
local mine = nil
local rows = {}
for i = 1, #ids, 2 do
  local f = redis.call('HMGET', p .. ':job:' .. ids[i], 'priority', 'created_at')
  local e = eff(tonumber(f[1]) or 0, tonumber(f[2]) or now)
  local s = tonumber(ids[i + 1])
  rows[#rows + 1] = {s, e}
  if s == seq then mine = e end
end
if mine == nil then return 1 end
local ahead = 0
for _, r in ipairs(rows) do
  if r[1] ~= seq and (r[2] > mine or (r[2] == mine and r[1] < seq)) then ahead = ahead + 1 end
end
return ahead + 1
"""

# ARGV: prefix, instance id, lease_ms. This instance is alive for another lease; returns how
# many instances are.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = ARGV[1] .. ':instances'
redis.call('ZADD', key, now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
return redis.call('ZCARD', key)
"""

_INT_FIELDS = {"seq", "audio_bytes", "attempts", "priority"}
_FLOAT_FIELDS = {"duration_s", "progress", "created_at", "started_at", "completed_at", "transcribed_s"}
_JOB_FIELDS = tuple(Job.__dataclass_fields__)


def default_instance_id() -> str:
    """Host name, process id and a random part: unique across restarts and replicas."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _job_from_hash(values: dict[str, str]) -> Job:
    kwargs: dict[str, Any] = {}
    for name in _JOB_FIELDS:
        raw = values.get(name)
        if raw is None:
            kwargs[name] = None
        elif name in _INT_FIELDS:
            kwargs[name] = int(raw)
        elif name in _FLOAT_FIELDS:
            kwargs[name] = float(raw)
        else:
            kwargs[name] = raw
    kwargs["status"] = JobStatus(kwargs["status"])
    kwargs["task"] = Task(kwargs["task"])
    kwargs["options"] = JobOptions.from_json(kwargs["options"])
    kwargs["progress"] = kwargs["progress"] or 0.0
    kwargs["attempts"] = kwargs["attempts"] or 0
    kwargs["priority"] = kwargs["priority"] or 0
    return Job(**kwargs)


def _pairs_to_dict(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _new_job_fields(new: NewJob) -> list[str]:
    values: dict[str, object | None] = {
        "audio_file": new.audio_file,
        "audio_sha256": new.audio_sha256,
        "audio_bytes": new.audio_bytes,
        "original_filename": new.original_filename,
        "model": new.model,
        "language": new.language,
        "task": new.task.value,
        "callback_url": new.callback_url,
        "duration_s": new.duration_s,
        "options": new.options.to_json(),
        "priority": new.priority,
        "cache_key": new.cache_key,
    }
    flat: list[str] = []
    for name, value in values.items():
        if value is not None:
            flat += [name, repr(value) if isinstance(value, float) else str(value)]
    return flat


class RedisJobStore:
    """The `JobStore` on Redis. Holds this instance's leases and renews them in the background.

    `on_lease_lost(job_id, reason)` is called (on the event loop) when a running job's lease
    turns out to be gone (`lost`: another instance took the job over) or the job was cancelled
    elsewhere (`cancelled`); the worker then stops that decode.
    """

    shared = True

    def __init__(
        self,
        url: str,
        prefix: str = "whisper",
        *,
        priority_aging_s: float = 60.0,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        instance_id: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.priority_aging_s = priority_aging_s
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.charge_interrupted = True  # whether a run whose lease expired counts as an attempt
        self.instance_id = instance_id or default_instance_id()
        self.end_write_retry_s = END_WRITE_RETRY_SECONDS
        self.on_lease_lost: Callable[[str, str], None] | None = None
        # Called with (requeued, failed) job ids after a sweep took over dead instances' jobs.
        self.on_reclaimed: Callable[[list[str], list[str]], None] | None = None
        # Any: with decode_responses every reply is str, which the client's types cannot say.
        self.redis: Any = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            health_check_interval=15,
            # A couple of quick retries ride out a dropped connection; an outage then answers
            # 503 within about a second instead of the client library's several.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._leases: dict[str, str] = {}  # job id -> token, for the jobs this instance runs
        self._stale: dict[str, str] = {}  # leases found lost, until their run's last write
        self._scripts = {
            name: self.redis.register_script(source)
            for name, source in (
                ("insert", _INSERT),
                ("claim", _CLAIM),
                ("renew", _RENEW),
                ("end_run", _END_RUN),
                ("reclaim", _RECLAIM),
                ("cancel", _CANCEL),
                ("delete_finished", _DELETE_FINISHED),
                ("progress", _PROGRESS),
                ("position", _POSITION),
                ("heartbeat", _HEARTBEAT),
                ("checkpoint", _CHECKPOINT),
                ("outranked", _OUTRANKED),
            )
        }
        self._tasks = BackgroundTasks(log)  # lease renewal and reclaim, while open
        self._down_since: float | None = None
        self._back_at: float | None = None  # when Redis last came back after an outage
        # Instances on this prefix that renewed their heartbeat within a lease (this one too).
        self.instances_alive = 0

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- plumbing -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Redis unreachable becomes StoreUnavailable (503), logged once per outage."""
        try:
            try:
                yield
            except ResponseError as exc:
                if not _refusing(exc):
                    raise
                raise RedisConnectionError(f"Redis refuses writes: {exc}") from exc
        except _DOWN as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.error("Redis at %s is unreachable: %s", self.safe_url, exc)
            raise StoreUnavailable(
                "The job store (Redis) cannot be reached right now; nothing was changed. "
                "Try again in a few seconds."
            ) from exc
        if self._down_since is not None:
            log.warning("Redis is reachable again (after %.1f s)", time.monotonic() - self._down_since)
            self._down_since = None
            self._back_at = time.monotonic()

    @property
    def safe_url(self) -> str:
        """The URL without a password, for logs."""
        head, sep, tail = self.url.rpartition("@")
        return f"{head.split('//')[0]}//***@{tail}" if sep else self.url

    def describe(self) -> dict[str, Any]:
        """For /health: which instance this is and how many share the queue."""
        return {"instance": self.instance_id, "instances": self.instances_alive}

    def location(self) -> str:
        return (
            f"jobs and queue in Redis at {self.safe_url} (prefix {self.prefix}), shared with every "
            f"instance there; this instance is {self.instance_id}"
        )

    @property
    def reachable(self) -> bool:
        """False while the last call found Redis down (health reports it)."""
        return self._down_since is None

    async def _script(self, name: str, *args: object) -> Any:
        async with self._guard():
            return await self._scripts[name](keys=[], args=[self.prefix, *args])  # type: ignore[list-item]

    async def _end_write(self, name: str, *args: object) -> Any:
        """A write that ends a run: retried through a Redis outage, for a while."""
        deadline = time.monotonic() + self.end_write_retry_s
        backoff = Backoff(END_WRITE_BACKOFF_SECONDS, END_WRITE_BACKOFF_CAP_SECONDS)
        while True:
            try:
                return await self._script(name, *args)
            except StoreUnavailable:
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)

    async def open(self) -> None:
        """Start renewing leases and sweeping expired ones. Redis may be down now: both retry."""
        self._tasks.spawn(self._renew_loop(), name="lease-renewal")
        self._tasks.spawn(self._reclaim_loop(), name="lease-reclaim")

    async def close(self) -> None:
        await self._tasks.close()
        with contextlib.suppress(RedisError, OSError):  # leaving: no longer counted as alive
            await self.redis.zrem(self.key("instances"), self.instance_id)
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            async with self._guard():
                return bool(await self.redis.ping())
        except StoreUnavailable:
            return False

    # -- leases ---------------------------------------------------------------------------
    @property
    def _lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    async def _renew_loop(self) -> None:
        while True:
            try:
                self.instances_alive = int(await self._script("heartbeat", self.instance_id, self._lease_ms))
                await self.renew_leases()
            except StoreUnavailable:
                pass  # logged by the guard; leases are renewed on the next pass
            except RedisError:
                log.exception("lease renewal failed")
            await asyncio.sleep(self.lease_s / 3)

    async def renew_leases(self) -> None:
        held = dict(self._leases)
        if not held:
            return
        args: list[object] = [self._lease_ms]
        for job_id, token in held.items():
            args += [job_id, token]
        answers = await self._script("renew", *args)
        for (job_id, token), answer in zip(held.items(), answers, strict=True):
            if answer == "ok" or self._leases.get(job_id) != token:
                continue
            self._stale[job_id] = self._leases.pop(job_id)
            log.warning(
                "job %s: %s",
                job_id,
                "cancelled on another instance; stopping it"
                if answer == "cancelled"
                else "its lease expired and another instance took it over; stopping it here",
                extra={"job_id": job_id},
            )
            if self.on_lease_lost is not None:
                self.on_lease_lost(job_id, str(answer))

    async def _reclaim_loop(self) -> None:
        """Sweeps for dead instances' leases. After a Redis outage every lease looks expired:
        the sweep then waits one lease period, so instances that are alive renew theirs first."""
        while True:
            try:
                if not self.reachable:
                    await self.ping()
                elif self._back_at is not None and time.monotonic() - self._back_at < self.lease_s:
                    pass
                else:
                    requeued, failed = await self.reclaim_expired()
                    if (requeued or failed) and self.on_reclaimed is not None:
                        self.on_reclaimed(requeued, failed)
            except StoreUnavailable:
                pass
            except RedisError:
                log.exception("lease sweep failed")
            await asyncio.sleep(max(self.lease_s / 3, 0.5))

    async def reclaim_expired(self) -> tuple[list[str], list[str]]:
        """Jobs whose instance stopped renewing: back to the queue, or failed past the limit."""
        charge = "1" if self.charge_interrupted else "0"
        out = await self._script("reclaim", repr(time.time()), self.max_attempts, _CRASHED, charge)
        split = out.index("|")
        requeued, failed = list(out[:split]), list(out[split + 1 :])
        if requeued:
            log.warning("requeued %d job(s) whose instance stopped: %s", len(requeued), ", ".join(requeued))
        if failed:
            log.warning("failed %d job(s) past the attempt limit: %s", len(failed), ", ".join(failed))
        return requeued, failed

    # -- reads ----------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        async with self._guard():
            values = await self.redis.hgetall(self.key("job", job_id))
        return _job_from_hash(values) if values else None

    async def _get_many(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        async with self._guard(), self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.key("job", job_id))
            rows = await pipe.execute()
        return [_job_from_hash(values) for values in rows if values]

    async def queue_position(self, job: Job) -> int:
        return int(
            await self._script("position", job.seq, repr(time.time()), self.priority_aging_s, URGENT - 1.0)
        )

    async def count(self, status: JobStatus) -> int:
        async with self._guard():
            return int(await self.redis.zcard(self.key("st", status.value)))

    async def counts_by_status(self) -> dict[str, int]:
        async with self._guard(), self.redis.pipeline(transaction=False) as pipe:
            for status in JobStatus:
                pipe.zcard(self.key("st", status.value))
            counts = await pipe.execute()
        return {status.value: int(n) for status, n in zip(JobStatus, counts, strict=True) if n}

    async def audio_files(self) -> set[str]:
        async with self._guard():
            job_ids = await self.redis.zrange(self.key("all"), 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self.key("job", job_id), "audio_file")
                names = await pipe.execute()
        return {name for name in names if name}

    async def queued_in_order(self, limit: int | None = None) -> list[Job]:
        async with self._guard():
            job_ids = await self.redis.zrange(self.key("st", "queued"), 0, -1)
        jobs = [job for job in await self._get_many(job_ids) if job.status is JobStatus.QUEUED]
        now = time.time()
        jobs.sort(
            key=lambda j: (-effective_priority(j.priority, now - j.created_at, self.priority_aging_s), j.seq)
        )
        return jobs[:limit] if limit else jobs

    async def list_jobs(
        self, statuses: Collection[JobStatus] = (), limit: int = 50, before_seq: int | None = None
    ) -> list[Job]:
        top = f"({before_seq}" if before_seq is not None else "+inf"
        sets = [self.key("st", s.value) for s in statuses] or [self.key("all")]
        async with self._guard():
            found: list[tuple[str, float]] = []
            for name in sets:
                found += await self.redis.zrevrangebyscore(
                    name, top, "-inf", start=0, num=limit, withscores=True
                )
        found.sort(key=lambda pair: -pair[1])
        return await self._get_many([job_id for job_id, _ in found[:limit]])

    async def recent_speeds(self, count: int = 20) -> list[tuple[float, float]]:
        async with self._guard():
            job_ids = await self.redis.zrevrange(self.key("st", "completed"), 0, count - 1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.key("job", job_id), ["duration_s", "started_at", "completed_at"])
                rows = await pipe.execute()
        speeds = []
        for duration, started, completed in rows:
            if duration and started and completed:
                audio, spent = float(duration), float(completed) - float(started)
                if audio > 0 and spent > 0:
                    speeds.append((audio, spent))
        return speeds

    async def find_cached(self, cache_key: str) -> Job | None:
        async with self._guard():
            job_id = await self.redis.get(self.key("cache", cache_key))
        job = await self.get(job_id) if job_id else None
        if job is None or job.status is not JobStatus.COMPLETED or job.cache_key != cache_key:
            return None
        return job

    async def expired(self, ended_before: float, limit: int = 500) -> list[Job]:
        async with self._guard():
            job_ids = await self.redis.zrangebyscore(
                self.key("ended"), "-inf", f"({ended_before!r}", start=0, num=limit
            )
        return [job for job in await self._get_many(job_ids) if job.status.finished]

    # -- writes ---------------------------------------------------------------------------
    async def _insert(
        self, new: NewJob, mode: str, extra: list[str] | None = None, max_queued: int = 0
    ) -> Job:
        seq = int(
            await self._script(
                "insert",
                new.job_id,
                mode,
                repr(time.time()),
                max_queued,
                *_new_job_fields(new),
                *(extra or []),
            )
        )
        if seq == -1:
            raise JobExists(new.job_id)
        if seq < -1:
            raise QueueAtLimit(-2 - seq)
        job = await self.get(new.job_id)
        assert job is not None  # just inserted; only retention removes jobs, and not queued ones
        return job

    async def insert(self, new: NewJob, max_queued: int = 0) -> Job:
        return await self._insert(new, "new", max_queued=max_queued)

    async def replace_failed(self, new: NewJob, max_queued: int = 0) -> Job:
        return await self._insert(new, "retry", max_queued=max_queued)

    async def insert_completed(self, new: NewJob, source: Job, note: str) -> Job:
        extra = ["note", note]
        if source.language is not None:
            extra += ["language", source.language]
        if source.duration_s is not None:
            extra += ["duration_s", repr(source.duration_s)]
        return await self._insert(new, "completed", extra)

    async def claim_next(self, prefer: Collection[str] = (), patience_s: float = 0.0) -> Job | None:
        token = f"{self.instance_id}:{uuid.uuid4().hex[:12]}"
        flat = await self._script(
            "claim",
            repr(time.time()),
            self.priority_aging_s,
            URGENT - 1.0,
            patience_s,
            self._lease_ms,
            token,
            self.instance_id,
            *sorted(prefer),
        )
        if not flat:
            return None
        job = _job_from_hash(_pairs_to_dict(flat))
        self._leases[job.job_id] = token
        return job

    def holds(self, job_id: str) -> bool:
        return job_id in self._leases

    async def set_progress(self, job_id: str, progress: float) -> None:
        with contextlib.suppress(StoreUnavailable):  # progress is advisory; the next report retries
            await self._script("progress", job_id, repr(progress))

    async def save_checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> bool:
        field = f"{int(checkpoint.get('channel', 0))}:{round(float(checkpoint['start']) * 1000)}"
        data = json.dumps(checkpoint, separators=(",", ":"))
        transcribed = repr(float(checkpoint.get("transcribed_s") or 0.0))
        kept = await self._end_write("checkpoint", job_id, self._token(job_id), field, data, transcribed)
        return bool(kept)

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        async with self._guard():
            raw = await self.redis.hvals(self.key("checkpoints", job_id))
        found = [json.loads(value) for value in raw]
        return sorted(found, key=lambda c: (int(c.get("channel", 0)), float(c["start"])))

    async def outranked(self, job: Job) -> bool:
        args = (job.priority, repr(job.created_at), job.seq, repr(time.time()))
        order = (self.priority_aging_s, URGENT - 1.0)
        return bool(await self._script("outranked", *args, *order))

    async def set_note(self, job_id: str, note: str, cacheable: bool = True) -> None:
        async with self._guard(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key("job", job_id), "note", note)
            if not cacheable:
                pipe.hdel(self.key("job", job_id), "cache_key")
            await pipe.execute()

    def _token(self, job_id: str) -> str:
        return self._leases.get(job_id) or self._stale.get(job_id, "")

    def _forget(self, job_id: str, token: str) -> None:
        if self._leases.get(job_id) == token:
            del self._leases[job_id]
        if self._stale.get(job_id) == token:
            del self._stale[job_id]

    async def _end_run(
        self, job_id: str, action: str, message: str = "", *pairs: str, max_attempts: int | None = None
    ) -> int:
        token = self._token(job_id)
        limit = self.max_attempts if max_attempts is None else max_attempts
        try:
            return int(
                await self._end_write(
                    "end_run", job_id, token, action, repr(time.time()), limit, message, *pairs
                )
            )
        finally:
            self._forget(job_id, token)

    async def complete(self, job_id: str, language: str | None, duration_s: float) -> bool:
        pairs = ["duration_s", repr(duration_s)]
        if language is not None:
            pairs += ["language", language]
        return await self._end_run(job_id, "complete", "", *pairs) == 1

    async def fail(self, job_id: str, error: str) -> None:
        await self._end_run(job_id, "fail", error)

    async def release(self, job_id: str) -> None:
        await self._end_run(job_id, "release")

    async def requeue_crashed(self, job_id: str, max_attempts: int, detail: str = "") -> bool:
        message = _CRASHED + detail
        return await self._end_run(job_id, "crashed", message, max_attempts=max_attempts) == 2

    async def cancel(self, job_id: str) -> Job | None:
        flat = await self._script("cancel", job_id, repr(time.time()))
        return _job_from_hash(_pairs_to_dict(flat)) if flat else None

    async def recover_interrupted(
        self, max_attempts: int, charge: bool = True
    ) -> tuple[list[str], list[str]]:
        """At start: only jobs whose lease expired; the others' instances are still running them.

        `charge` also holds for the sweeps that follow (see the SQLite journal's)."""
        self.max_attempts = max_attempts
        self.charge_interrupted = charge
        try:
            return await self.reclaim_expired()
        except StoreUnavailable:
            return [], []

    async def delete_finished(self, job_id: str) -> bool:
        return bool(await self._script("delete_finished", job_id))

    async def clear(self) -> int:
        """Remove every key under the prefix (tests and `make` targets; never the service)."""
        removed = 0
        async with self._guard():
            async for name in self.redis.scan_iter(match=f"{self.prefix}:*", count=500):
                removed += int(await self.redis.delete(name))
        return removed
