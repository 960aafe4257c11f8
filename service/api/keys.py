"""The one application key the handlers share: the services object the app factory built."""

from __future__ import annotations

from aiohttp import web

from service.usecases.services import Services

SERVICES = web.AppKey("services", Services)
