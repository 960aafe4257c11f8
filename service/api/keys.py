"""Typed keys for what the application shares with its handlers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from service.engines.base import ModelCatalog
from service.inference.worker import Worker
from service.jobs.events import JobEvents
from service.jobs.watch import JobWatch
from service.settings import Settings
from service.store.base import JobStore
from service.store.cluster import ClusterBus
from service.store.files import Layout
from service.webhooks.dispatcher import WebhookDispatcher

SETTINGS = web.AppKey("settings", Settings)
LAYOUT = web.AppKey("layout", Layout)
JOURNAL = web.AppKey("journal", JobStore)
WORKER = web.AppKey("worker", Worker)
ENGINE = web.AppKey("engine", ModelCatalog)  # the engine itself with --isolation thread
SUBMIT_LOCK = web.AppKey("submit_lock", asyncio.Lock)
STARTED_AT = web.AppKey("started_at", float)
WATCH = web.AppKey("watch", JobWatch)
EVENTS = web.AppKey("events", JobEvents)
WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)
CLUSTER = web.AppKey("cluster", ClusterBus)  # only with a shared (Redis) store
