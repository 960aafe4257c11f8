"""Errors leave in one shape: domain errors and aiohttp's own become JSON with a fitting status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from service.api import openai_compat
from service.errors import ServiceError, UploadStalled

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _error(
    request: web.Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    exc: BaseException | None = None,
) -> web.Response:
    """The service's own error shape, or OpenAI's on the OpenAI-compatible routes."""
    if openai_compat.is_openai_path(request.path):
        return openai_compat.error_response(status, message, headers, exc)
    return error_response(status, message, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": ...} with a fitting status code."""
    try:
        return await handler(request)
    except ServiceError as exc:
        headers = dict(exc.headers)
        if exc.status == 503:
            headers.setdefault("Retry-After", "5")
        response = _error(request, exc.status, exc.message, headers or None, exc)
        if isinstance(exc, UploadStalled) or _body_left(request):
            # The rest of the body is not read: closing is cheaper than draining a refused
            # upload, and aiohttp cannot drain one it cannot decode (a bogus gzip body), which
            # would leave the client's next request on this connection unanswered.
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = None
        if exc.status == 404:
            message = f"No such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
            headers = {"Allow": exc.headers.get("Allow", "")}
        elif exc.status == 413:
            message = "The request body is too large."
        else:
            message = exc.reason
        response = _error(request, exc.status, message, headers, exc)
        if _body_left(request):
            response.force_close()
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(request, 500, "Internal error in the service; its log has the details.")


def _body_left(request: web.Request) -> bool:
    return request.can_read_body and not request.content.at_eof()


def _unreadable(status: int, exc: BaseException | None, message: str | None) -> str:
    """What to tell a client whose request aiohttp could not parse."""
    if status >= 500:
        return "Internal error in the service; its log has the details."
    if isinstance(exc, LineTooLong):
        return "The URL or a header is too long; shorten it."
    detail = exc.message if isinstance(exc, HttpProcessingError) else message
    first = (detail or "").strip().splitlines()
    return f"The request could not be read as HTTP: {first[0][:200] if first else 'malformed'}."


class _JsonErrorsHandler(web.RequestHandler):
    """A connection whose answer to a request aiohttp cannot parse (a header or URL past its
    limits, bad framing) is JSON like every other error, instead of aiohttp's plain text."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:  # the client's mistake (or a scanner's): one line, no traceback
            log.info("unreadable request from %s: %s", request.remote, _unreadable(status, exc, message))
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        response = error_response(status, _unreadable(status, exc, message))
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """An AppRunner whose connections answer aiohttp's own parse errors in the service's JSON
    shape. aiohttp has no setting for it: the server it builds is rebuilt with that handler."""

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()
        return _JsonErrorsServer(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **built._kwargs,
        )
