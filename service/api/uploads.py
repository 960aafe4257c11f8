"""Reading a multipart upload: the file streams to tmp/, the short fields into memory.

Everything a client controls is bounded: how many uploads are received at once, how many parts,
how many bytes of fields, how long the body may stall; a refusal keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from service.api.keys import SERVICES
from service.errors import BadRequest, TooManyUploads, UploadStalled, UploadTooLarge
from service.store import files as storage
from service.store.files import ReceivedUpload

# Form fields other than the file are short; anything longer is a client bug or abuse.
MAX_FIELD_BYTES = 4096
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Every route's fields fit many times over; a body of thousands of tiny parts is abuse.
MAX_PARTS = 64
# All parts but the file together (known fields, repeats, ignored ones): room for every field
# at its longest, and a bound on what a form of small parts can make the service read and keep.
MAX_FORM_TEXT_BYTES = 64 * 1024
# A client refused for --max-uploads may try again soon: receiving an upload takes seconds.
UPLOADS_RETRY_AFTER_SECONDS = 2

FieldCheck = Callable[[dict[str, str]], object]
T = TypeVar("T")


class UploadSlots:
    """Counts uploads whose body is being received. Past --max-uploads, more are refused before
    their body is read, so slow clients cannot pile up open files and half-written uploads. A
    slot is held only while the body arrives, not while a request waits for its transcript."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if self.limit and self.in_use >= self.limit:
            raise TooManyUploads(
                f"The service is receiving {self.in_use} uploads already (--max-uploads); nothing "
                "was stored. Send it again in a moment.",
                headers={"Retry-After": str(UPLOADS_RETRY_AFTER_SECONDS)},
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)


def setup_uploads(app: web.Application) -> None:
    app[UPLOAD_SLOTS] = UploadSlots(app[SERVICES].settings.max_uploads)


@dataclass
class Form:
    """A received multipart upload: its short fields, and the file as stored in tmp/."""

    fields: dict[str, str]
    upload: ReceivedUpload | None
    filename: str | None

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.discard()


@dataclass
class _Reading:
    """What the form has cost so far, and the fields it has given."""

    idle_timeout: float
    values: dict[str, list[str]] = field(default_factory=dict)
    parts: int = 0
    text_bytes: int = 0

    def fields(self) -> dict[str, str]:
        """Repeated values joined with commas, once (joining as they come costs quadratic time)."""
        return {name: ",".join(v for v in values if v) for name, values in self.values.items()}

    def count_text(self, size: int) -> None:
        self.text_bytes += size
        if self.text_bytes > MAX_FORM_TEXT_BYTES:
            raise UploadTooLarge(
                f"The form's fields other than 'file' come to more than {MAX_FORM_TEXT_BYTES // 1024} KiB; "
                "send each field once, with a short value."
            )

    async def within_timeout(self, step: Awaitable[T]) -> T:
        """One read of the body; a client that sends nothing for --upload-timeout is dropped."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                with _multipart_errors():
                    return await step
        except TimeoutError:
            raise UploadStalled(
                f"The upload sent nothing for {self.idle_timeout:g} s (--upload-timeout) and was "
                "dropped; nothing was kept. Send it again."
            ) from None


@contextlib.contextmanager
def _multipart_errors() -> Iterator[None]:
    """aiohttp says a body is malformed (no or a bad boundary, a bad part header, a truncated
    part, a body that does not match its Content-Encoding) with ValueError, HttpProcessingError
    or RequestPayloadError; those are the client's mistakes (400), not the service's (500)."""
    try:
        yield
    except (ValueError, HttpProcessingError, web.RequestPayloadError) as exc:
        # aiohttp's messages start "400, message:" on a line of their own; the last line says it.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        raise BadRequest(
            f"The multipart body is malformed ({detail}); "
            "send multipart/form-data with the audio in a field named 'file'."
        ) from None


async def _file_chunks(part: BodyPartReader, reading: _Reading) -> AsyncIterator[bytes]:
    while chunk := await reading.within_timeout(part.read_chunk(storage.UPLOAD_CHUNK_BYTES)):
        yield chunk


async def _read_field(part: BodyPartReader, reading: _Reading) -> str:
    """A short text field, read with a bound so an oversized one is never held in memory."""
    raw = b""
    while chunk := await reading.within_timeout(part.read_chunk(MAX_FIELD_BYTES)):
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise BadRequest(f"Field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes.")
        reading.count_text(len(chunk))
    return raw.decode("utf-8", errors="replace").strip()


async def _skip(part: BodyPartReader, reading: _Reading) -> None:
    """An unknown field is ignored, as form posts usually are; its bytes still count."""
    while chunk := await reading.within_timeout(part.read_chunk(MAX_FIELD_BYTES)):
        reading.count_text(len(chunk))


async def read_form(
    request: web.Request,
    names: Collection[str],
    check: FieldCheck,
    tmp_dir: Path,
    max_bytes: int,
    repeated: Collection[str] = (),
) -> Form:
    """Stream the multipart body: the file goes to `tmp_dir`, the short fields in `names` into memory.

    `check` sees the fields sent before the file, so a bad one is refused before a large body is
    stored. A field in `repeated` may come several times; its values are joined with commas. Any
    other field sent twice is refused: which of the two was meant is anyone's guess.
    """
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "Send multipart/form-data with the audio in a field named 'file' (curl -F file=@audio.wav ...)."
        )
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise storage.too_large(max_bytes)
    with request.app[UPLOAD_SLOTS].take():
        return await _receive(request, names, check, tmp_dir, max_bytes, repeated)


async def _receive(
    request: web.Request,
    names: Collection[str],
    check: FieldCheck,
    tmp_dir: Path,
    max_bytes: int,
    repeated: Collection[str],
) -> Form:
    reading = _Reading(idle_timeout=request.app[SERVICES].settings.upload_timeout)
    form = Form(fields={}, upload=None, filename=None)
    try:
        with _multipart_errors():
            reader = await request.multipart()
        while (part := await reading.within_timeout(reader.next())) is not None:
            reading.parts += 1
            if reading.parts > MAX_PARTS:
                raise UploadTooLarge(f"The form has more than {MAX_PARTS} parts; send each field once.")
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not supported.")
            if part.name == "file":
                if form.upload is not None:
                    raise BadRequest("Send exactly one 'file' field.")
                # Fields sent before the file are checked now, before a large body is stored.
                check(reading.fields())
                form.filename = part.filename
                form.upload = await storage.receive_upload(_file_chunks(part, reading), tmp_dir, max_bytes)
            elif part.name is not None and part.name in names:
                name = part.name
                if name in reading.values and name not in repeated:
                    raise BadRequest(f"Field {name!r} was sent twice; send it once.")
                reading.values.setdefault(name, []).append(await _read_field(part, reading))
            else:
                await _skip(part, reading)
        form.fields = reading.fields()
    except BaseException:
        form.discard()
        raise
    return form
