"""Live job streams: WebSocket (`GET /ws/{job_id}`) and Server-Sent Events (`GET /events/{job_id}`).

The journal speaks first and last; the event bus fills in between. A stream subscribes to the
job's events, then reads the job (so nothing can fall between the two), sends that as a `state`
message, replays the kept events after the client's last event id, forwards live ones, and when
the job ends sends the final `state` from the journal and closes. A client that missed events
(it dropped, or the server restarted and forgot them) still ends with the true outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from service.api.keys import SERVICES
from service.api.schemas import STATE
from service.errors import BadRequest, ServiceError, ServiceUnavailable
from service.jobs import events as ev
from service.jobs.events import JobEvent
from service.jobs.job import Job

log = logging.getLogger(__name__)

# An SSE comment this often when nothing happens, so proxies keep the connection and a client
# that left is noticed (the write fails).
KEEPALIVE_SECONDS = 15.0
# WebSocket pings; a client that stops answering is dropped after half as long again.
WS_HEARTBEAT_SECONDS = 20.0
# At shutdown, how long streams get to send their last state and close before they are closed.
SHUTDOWN_CLOSE_SECONDS = 2.0


@dataclass(frozen=True)
class Message:
    type: str
    data: dict[str, Any]
    id: int | None = None  # the event id; None for `state`

    def as_json(self) -> str:
        body: dict[str, Any] = {"type": self.type, "data": self.data}
        if self.id is not None:
            body["id"] = self.id
        return json.dumps(body)

    def as_sse(self) -> bytes:
        lines = [] if self.id is None else [f"id: {self.id}"]
        lines += [f"event: {self.type}", f"data: {json.dumps(self.data)}"]
        return ("\n".join(lines) + "\n\n").encode()


class StreamHub:
    """The open streams, so shutdown ends them instead of waiting for them to end."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.open: set[asyncio.Event] = set()  # one per stream, set when it has ended
        self.sockets: set[web.WebSocketResponse] = set()

    async def close_all(self, _: web.Application | None = None) -> None:
        """on_shutdown: streams send their state and close (WS 1001); stragglers are closed."""
        self.closing.set()
        if self.open:
            waits = [asyncio.ensure_future(ended.wait()) for ended in self.open]
            await asyncio.wait(waits, timeout=SHUTDOWN_CLOSE_SECONDS)
            for wait in waits:
                wait.cancel()
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


STREAMS = web.AppKey("streams", StreamHub)


def _last_event_id(request: web.Request, header: bool) -> int:
    raw = request.headers.get("Last-Event-ID") if header else None
    if raw is None or raw.strip() == "":
        raw = request.query.get("last_event_id", "")
    if raw.strip() == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"last_event_id must be a whole number, not {raw!r}.") from None
    if value < 0:
        raise BadRequest(f"last_event_id must not be negative, got {value}.")
    return value


class _Stream:
    """One client's messages: state, replayed and live events, final state.

    `finished` tells afterwards whether the job ended (else the server is stopping).
    """

    def __init__(
        self,
        request: web.Request,
        job: Job,
        first: dict[str, Any],
        queue: asyncio.Queue[JobEvent],
        last_id: int,
    ) -> None:
        self.request = request
        self.job = job
        self.first = first
        self.queue = queue
        self.last_id = last_id
        self.finished = job.status.finished

    async def _state(self, ended: JobEvent | None = None) -> dict[str, Any]:
        """The journal's word now; if it cannot be read, what the end event said."""
        job_id = self.job.job_id
        fallback: dict[str, Any] = {
            "job_id": job_id,
            "status": ended.data.get("status") if ended is not None else self.job.status.value,
        }
        try:
            services = self.request.app[SERVICES]
            job = await services.store.get(job_id)
            if job is not None:
                return await services.views.status(job)
        except ServiceError as exc:  # e.g. a completed job whose transcript file went missing
            fallback["error"] = exc.message
        except Exception:  # the journal is closing under a shutdown
            log.debug("stream for %s: could not read the journal", job_id, exc_info=True)
        return fallback

    def _stopping(self) -> bool:
        return self.request.app[STREAMS].closing.is_set() or self.request.app[SERVICES].worker.stopping

    async def _next_event(self) -> JobEvent | None:
        """The next event, or None after KEEPALIVE_SECONDS or a wake-up (shutdown, job change)."""
        app = self.request.app
        with app[SERVICES].watch.watching(self.job.job_id) as changed:  # Worker.stop wakes every watcher
            getter = asyncio.ensure_future(self.queue.get())
            closing = asyncio.ensure_future(app[STREAMS].closing.wait())
            wake: set[asyncio.Future[Any]] = {getter, closing, changed}
            try:
                await asyncio.wait(wake, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                if not getter.done():
                    getter.cancel()  # a cancelled get leaves its item in the queue
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def messages(self) -> AsyncGenerator[Message | None, None]:
        """None now and then while idle: SSE writes a keep-alive comment for it."""
        events = self.request.app[SERVICES].events
        sent = self.last_id
        replay = events.since(self.job.job_id, sent)
        if self.job.status.finished:
            # One final state; a client resuming with a last id first gets what it missed.
            if sent > 0:
                for event in replay:
                    yield Message(event.type, event.data, event.id)
            yield Message(STATE, self.first)
            return
        yield Message(STATE, self.first)
        pending: deque[JobEvent] = deque(_latest_run(replay))
        while True:
            while pending:
                event = pending.popleft()
                if event.id <= sent:  # replayed already, or seen before the reconnect
                    continue
                sent = event.id
                yield Message(event.type, event.data, event.id)
                if event.type == ev.END:
                    self.finished = True
                    yield Message(STATE, await self._state(event))
                    return
            while not self.queue.empty():
                pending.append(self.queue.get_nowait())
            if pending:
                continue
            if self._stopping():
                yield Message(STATE, await self._state())
                return
            live = await self._next_event()
            if live is None:
                yield None
            else:
                pending.append(live)


def _latest_run(replay: list[JobEvent]) -> list[JobEvent]:
    """Drop an earlier run's events (it failed, and the job was submitted again): that run
    ended with an `end` that later events follow. A last `end` is this run's, just arrived."""
    for index in range(len(replay) - 2, -1, -1):
        if replay[index].type == ev.END:
            return replay[index + 1 :]
    return replay


@contextlib.asynccontextmanager
async def _open_stream(request: web.Request, header_id: bool) -> AsyncIterator[_Stream]:
    """Subscribe, then read the job; 404 (before any upgrade) when there is none."""
    app = request.app
    hub, services = app[STREAMS], app[SERVICES]
    if hub.closing.is_set() or services.worker.stopping:
        raise ServiceUnavailable("The service is shutting down; reconnect in a moment.")
    job_id = request.match_info["job_id"]
    last_id = _last_event_id(request, header_id)
    events = services.events
    ended = asyncio.Event()
    try:
        with events.subscribe(job_id) as queue:  # first, so no event falls before the read
            job = await services.views.get(job_id)
            first = await services.views.status(job)
            hub.open.add(ended)
            try:
                yield _Stream(request, job, first, queue, last_id)
            finally:
                hub.open.discard(ended)
                ended.set()
    finally:
        if not events.since(job_id):  # an unknown job, or one whose events are long gone
            events.forget(job_id)


async def _send_all(ws: web.WebSocketResponse, stream: _Stream) -> None:
    async with contextlib.aclosing(stream.messages()) as messages:
        async for message in messages:
            if message is not None:
                await ws.send_str(message.as_json())


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    """Clients have nothing to say; reading answers pings and notices when they leave."""
    async for message in ws:
        if message.type == WSMsgType.ERROR:
            return


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """GET /ws/{job_id}[?last_event_id=N]: JSON text messages; closes 1000 at the job's end."""
    async with _open_stream(request, header_id=False) as stream:
        # `timeout`: how long a close waits for the client's reply, short so shutdown is quick.
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_SECONDS, timeout=SHUTDOWN_CLOSE_SECONDS)
        await ws.prepare(request)
        hub = request.app[STREAMS]
        hub.sockets.add(ws)
        writer = asyncio.ensure_future(_send_all(ws, stream))
        reader = asyncio.ensure_future(_read_until_closed(ws))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            # The writer ended (all sent, or the client is gone) or the client closed first.
            if writer.done() and not writer.cancelled() and writer.exception() is None and not ws.closed:
                # Stop reading first: aiohttp drops the connection without waiting for the
                # client's close reply when a close interrupts a pending read (the client sees 1006).
                reader.cancel()
                await asyncio.wait({reader})
                code = WSCloseCode.OK if stream.finished else WSCloseCode.GOING_AWAY
                await ws.close(code=code)
        finally:
            hub.sockets.discard(ws)
            for task in (writer, reader):
                task.cancel()
            await asyncio.wait({writer, reader})
            for task in (writer, reader):
                if not task.cancelled() and task.exception() is not None:  # mostly: the client left
                    log.debug("stream for %s: %r", stream.job.job_id, task.exception())
    return ws


async def server_sent_events(request: web.Request) -> web.StreamResponse:
    """GET /events/{job_id}: text/event-stream; resumes from Last-Event-ID or ?last_event_id=."""
    async with _open_stream(request, header_id=True) as stream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            }
        )
        await response.prepare(request)
        try:
            async with contextlib.aclosing(stream.messages()) as messages:
                async for message in messages:
                    await response.write(b": keep-alive\n\n" if message is None else message.as_sse())
            await response.write_eof()
        except ConnectionError:  # the client left (aiohttp's reset error is a ConnectionResetError)
            pass
    return response


def setup_streams(app: web.Application) -> None:
    """The hub of open streams, closed as shutdown begins."""
    app[STREAMS] = StreamHub()
    app.on_shutdown.append(app[STREAMS].close_all)
