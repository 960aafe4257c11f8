"""The one services object: everything the HTTP side may use, built once by the app factory.

Handlers reach it under one application key and call the use cases on it; nothing below the
app factory asks which backend is in use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.engines.base import ModelCatalog
from service.inference.selfcheck import SelfCheck
from service.inference.worker import Worker
from service.jobs.events import JobEvents
from service.jobs.watch import JobWatch
from service.settings import Settings
from service.store.base import JobStore
from service.store.cluster import ClusterBus
from service.store.files import Layout
from service.usecases.control import JobControl
from service.usecases.submit import Submissions
from service.usecases.views import JobViews
from service.webhooks.dispatcher import WebhookDispatcher


@dataclass
class Services:
    settings: Settings
    layout: Layout
    store: JobStore
    # What the engine says about model names and its device (the engine itself with --isolation thread).
    catalog: ModelCatalog
    worker: Worker
    events: JobEvents
    watch: JobWatch
    webhooks: WebhookDispatcher
    submissions: Submissions
    control: JobControl
    views: JobViews
    # The service's checks of itself (/health's checks) and what systemd is told.
    selfcheck: SelfCheck
    started_at: float
    # Only with a shared (Redis) store: what instances tell each other.
    cluster: ClusterBus | None = None
    # Uploads, cancels and file clean-ups of one job id take turns under it.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
