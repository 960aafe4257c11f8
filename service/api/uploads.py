"""Reading a multipart upload: the file streams to tmp/, the short fields into memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from service.errors import BadRequest
from service.store import files as storage
from service.store.files import ReceivedUpload

# Form fields other than the file are short; anything longer is a client bug or abuse.
MAX_FIELD_BYTES = 4096
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

FieldCheck = Callable[[dict[str, str]], object]


@dataclass
class Form:
    """A received multipart upload: its short fields, and the file as stored in tmp/."""

    fields: dict[str, str]
    upload: ReceivedUpload | None
    filename: str | None

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.discard()


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


async def _read_chunk(part: BodyPartReader, size: int) -> bytes:
    with _multipart_errors():
        return await part.read_chunk(size)


async def _file_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await _read_chunk(part, storage.UPLOAD_CHUNK_BYTES):
        yield chunk


async def _read_field(part: BodyPartReader) -> str:
    """A short text field, read with a bound so an oversized one is never held in memory."""
    raw = b""
    while chunk := await _read_chunk(part, MAX_FIELD_BYTES):
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise BadRequest(f"Field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes.")
    return raw.decode("utf-8", errors="replace").strip()


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
    stored. A field in `repeated` may come several times; its values are joined with commas.
    """
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "Send multipart/form-data with the audio in a field named 'file' (curl -F file=@audio.wav ...)."
        )
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise storage.too_large(max_bytes)
    form = Form(fields={}, upload=None, filename=None)
    try:
        with _multipart_errors():
            reader = await request.multipart()
        while True:
            with _multipart_errors():
                part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not supported.")
            if part.name == "file":
                if form.upload is not None:
                    raise BadRequest("Send exactly one 'file' field.")
                # Fields sent before the file are checked now, before a large body is stored.
                check(form.fields)
                form.filename = part.filename
                form.upload = await storage.receive_upload(_file_chunks(part), tmp_dir, max_bytes)
            elif part.name is not None and part.name in names:
                name, value = part.name, await _read_field(part)
                if name in repeated and form.fields.get(name):
                    value = f"{form.fields[name]},{value}"
                form.fields[name] = value
            else:
                with _multipart_errors():
                    await part.release()  # unknown fields are ignored, as form posts usually are
    except BaseException:
        form.discard()
        raise
    return form
