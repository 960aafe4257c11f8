"""Errors leave in one shape: domain errors and aiohttp's own become JSON with a fitting status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.api import openai_compat
from service.errors import ServiceError

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
        return _error(request, exc.status, exc.message, headers or None, exc)
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
        return _error(request, exc.status, message, headers, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(request, 500, "Internal error in the service; its log has the details.")
