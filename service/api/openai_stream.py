"""`stream=true` on `/v1/audio/...`: OpenAI's transcript events as Server-Sent Events.

The upload is an ordinary job, as without streaming. This follows the job's segments on the
event bus as they are decoded, sends each as a `transcript.text.delta`, and ends with one
`transcript.text.done` holding the job's stored transcript. The deltas add up to that text:
whatever the live segments did not cover (a transcript answered from the cache, a run resumed
after a restart) arrives as one last delta. A client that drops the stream leaves the job
running; its result stays at `/status/{id}`. Once the stream has begun, an error is a
`data: {"error": {...}}` event, which OpenAI's clients raise as `APIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from service.api.keys import SERVICES
from service.errors import ServiceError
from service.jobs import events as ev
from service.jobs.events import JobEvent
from service.jobs.job import Job

log = logging.getLogger(__name__)

DELTA = "transcript.text.delta"
DONE = "transcript.text.done"
# A comment line this often while nothing is decoded (a queued job), so proxies keep the
# connection and a client that left is noticed when the write fails.
KEEPALIVE_SECONDS = 15.0
# Whisper's encoder turns each second of audio into 50 positions: the request's input tokens.
AUDIO_TOKENS_PER_SECOND = 50

ErrorBody = Callable[[ServiceError], dict[str, Any]]


def event_bytes(data: dict[str, Any]) -> bytes:
    """One SSE event carrying JSON, as OpenAI sends them (no `event:` line)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def word_logprobs(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's `logprobs` entries, one per word: Whisper's word probability, as a natural log."""
    out = []
    for word in words:
        text = str(word.get("word", ""))
        probability = word.get("probability")
        logprob = math.log(max(float(probability), 1e-12)) if probability is not None else None
        out.append({"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))})
    return out


def token_usage(result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's token usage: audio positions in, the decoder's tokens (timestamps too) out."""
    audio = math.ceil(float(result.get("duration") or 0.0) * AUDIO_TOKENS_PER_SECOND)
    output = sum(len(segment.get("tokens") or ()) for segment in result.get("segments", []))
    return {
        "type": "tokens",
        "input_tokens": audio,
        "output_tokens": output,
        "total_tokens": audio + output,
        "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
    }


class Deltas:
    """The text sent so far, and the events that extend it."""

    def __init__(self, logprobs: bool) -> None:
        self.logprobs = logprobs
        self.text = ""
        self.words_sent = 0

    def _delta(self, delta: str, words: list[dict[str, Any]]) -> dict[str, Any]:
        self.text += delta
        event: dict[str, Any] = {"type": DELTA, "delta": delta}
        if self.logprobs:
            event["logprobs"] = word_logprobs(words)
            self.words_sent += len(words)
        return event

    def segment(self, segment: dict[str, Any]) -> dict[str, Any] | None:
        """A decoded segment's delta; None for one with no text."""
        piece = str(segment.get("text", "")).strip()
        if not piece:
            return None
        return self._delta(" " + piece if self.text else piece, list(segment.get("words") or ()))

    def finish(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """What is left to send: the uncovered rest of the transcript, then `done`."""
        final = str(result.get("text", "")).strip()
        words = [w for segment in result.get("segments", []) for w in segment.get("words") or ()]
        out = []
        if len(final) > len(self.text) and final.startswith(self.text):
            out.append(self._delta(final[len(self.text) :], words[self.words_sent :]))
        done: dict[str, Any] = {"type": DONE, "text": final}
        if self.logprobs:
            done["logprobs"] = word_logprobs(words)
        done["usage"] = token_usage(result)
        out.append(done)
        return out


async def _next_event(queue: asyncio.Queue[JobEvent], ending: asyncio.Future[Job]) -> JobEvent | None:
    """The job's next event; None when the job ended or KEEPALIVE_SECONDS passed."""
    getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
    wake: set[asyncio.Future[Any]] = {getter, ending}
    try:
        await asyncio.wait(wake, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()  # a cancelled get leaves its item in the queue
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def stream_job(
    request: web.Request,
    job: Job,
    ending: Awaitable[Job],
    load_result: Callable[[Job], Awaitable[dict[str, Any]]],
    error_body: ErrorBody,
    headers: dict[str, str],
    logprobs: bool,
) -> web.StreamResponse:
    """Send the job's deltas as they are decoded, then `done`; `ending` waits for the job's end
    and raises the error the client should see when it did not complete."""
    events = request.app[SERVICES].events
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            **headers,
        }
    )
    deltas = Deltas(logprobs)
    last_id = 0

    async def forward(event: JobEvent) -> None:
        nonlocal last_id
        if event.id <= last_id:  # seen in the replay already
            return
        last_id = event.id
        if event.type == ev.SEGMENT and (delta := deltas.segment(event.data)) is not None:
            await response.write(event_bytes(delta))

    with events.subscribe(job.job_id) as queue:  # before the replay, so nothing falls between
        waiting = asyncio.ensure_future(ending)
        try:
            await response.prepare(request)
            for event in events.since(job.job_id):
                await forward(event)
            while not waiting.done():
                live = await _next_event(queue, waiting)
                if live is not None:
                    await forward(live)
                elif not waiting.done():
                    await response.write(b": keep-alive\n\n")
            while not queue.empty():
                await forward(queue.get_nowait())
            try:
                result = await load_result(waiting.result())
                for event_data in deltas.finish(result):
                    await response.write(event_bytes(event_data))
            except ServiceError as exc:
                await response.write(event_bytes(error_body(exc)))
            except Exception:  # the answer has begun: the error can only be an event now
                log.exception("stream of job %s", job.job_id)
                failure = ServiceError("Internal error in the service; its log has the details.")
                await response.write(event_bytes(error_body(failure)))
            await response.write_eof()
        except ConnectionError:  # the client left; the job goes on
            pass
        finally:
            if not waiting.done():
                waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiting
    return response
