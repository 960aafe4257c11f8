"""What service instances sharing Redis tell each other: job events, cancels, new work.

One pub/sub channel, `<prefix>:bus`. Each instance publishes its own job events there (status,
progress, segments, the end) and replays the other instances' events into its local event bus,
so a live stream, a `?wait=` long poll or a webhook works on whichever instance the client
reached. A cancel of a job running elsewhere is sent to the instance running it; a new upload
wakes idle workers everywhere.

Pub/sub is a hint, never the truth: a message lost while Redis was away costs only latency.
Streams end with the store's state, waiters re-read it, and a cancel also reaches the running
instance through its lease renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from service.backoff import Backoff
from service.jobs import events as ev
from service.jobs.events import JobEvent, JobEvents
from service.jobs.watch import JobWatch
from service.store.redis import RedisJobStore
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# Between reconnection attempts while Redis is away (doubling up to the cap).
RECONNECT_BASE_SECONDS = 0.5
RECONNECT_CAP_SECONDS = 5.0


class ClusterBus:
    """Relays events between instances; `ctx` is its aiohttp cleanup context."""

    def __init__(
        self,
        store: RedisJobStore,
        events: JobEvents,
        watch: JobWatch,
        wake: Callable[[], None],
        cancel_running: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.events = events
        self.watch = watch
        self.wake = wake
        self.cancel_running = cancel_running
        self.channel = store.key("bus")
        self.instance_id = store.instance_id
        self.connected = asyncio.Event()
        self._listening = BackgroundTasks(log)
        self._sends = BackgroundTasks(log)
        events.add_listener(self._on_local_event)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        self._listening.spawn(self._listen(), name="cluster-bus")
        try:
            yield
        finally:
            await self._listening.close()
            await self._sends.close()

    # -- out ------------------------------------------------------------------------------
    def _on_local_event(self, event: JobEvent) -> None:
        if event.origin is not None:
            return  # relayed from another instance: it was published there
        self._send({"kind": "event", "job_id": event.job_id, "type": event.type, "data": event.data})

    def cancel(self, job_id: str) -> None:
        """Ask whichever instance runs the job to stop it (the store already says cancelled)."""
        self._send({"kind": "cancel", "job_id": job_id})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({**message, "origin": self.instance_id})
        self._sends.spawn(self._publish(body))

    async def _publish(self, body: str) -> None:
        try:
            await self.store.redis.publish(self.channel, body)
        except (RedisError, OSError):
            log.debug("cluster bus: could not publish (Redis away)", exc_info=True)

    # -- in -------------------------------------------------------------------------------
    async def _listen(self) -> None:
        backoff = Backoff(RECONNECT_BASE_SECONDS, RECONNECT_CAP_SECONDS)
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                backoff.reset()
                # Jobs may have been queued while we were not listening: look once.
                self.wake()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._handle(message["data"])
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("cluster bus: lost Redis (%s); reconnecting", exc)
                self.connected.clear()
                await asyncio.sleep(backoff.next())
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _handle(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            origin = str(message["origin"])
            kind = message["kind"]
            job_id = str(message["job_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster bus: ignoring a malformed message %.200r", raw)
            return
        if origin == self.instance_id:
            return
        if kind == "cancel":
            if self.cancel_running(job_id):
                log.info("job %s: cancelled through another instance; stopping it", job_id)
            return
        if kind != "event":
            return
        event_type = str(message.get("type"))
        data = message.get("data") or {}
        self.events.publish(job_id, event_type, data, origin=origin)
        if event_type == ev.END:
            self.watch.notify(job_id)
        elif event_type == ev.STATUS and data.get("status") == "queued":
            self.wake()
