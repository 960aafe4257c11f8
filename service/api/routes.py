"""The route table: every HTTP route the service answers, with its name, in one place.

Names are what the OpenAPI document keys its operations on, and what `url_for` builds from.
"""

from __future__ import annotations

from aiohttp import web

from service.api import clients, dashboard, metrics, openai_compat, openapi, rest, streams, system, uploads


def setup_routes(app: web.Application) -> None:
    add = app.router
    # Jobs: the service's own API.
    add.add_post("/transcribe", rest.transcribe, name="transcribe")
    add.add_get("/status/{job_id}", rest.status, name="status")
    add.add_get("/download/{job_id}", rest.download, name="download")
    add.add_delete("/jobs/{job_id}", rest.cancel, name="cancel")
    add.add_get("/jobs", rest.list_jobs, name="jobs")
    add.add_get("/queue", rest.queue_view, name="queue")
    # Live progress.
    add.add_get("/ws/{job_id}", streams.websocket, name="stream_ws")
    add.add_get("/events/{job_id}", streams.server_sent_events, name="stream_sse")
    # The service itself.
    add.add_get("/health", system.health, name="health")
    add.add_get("/models", system.list_models, name="models")
    add.add_post("/models/{name}/load", system.load_model, name="load_model")
    add.add_delete("/models/{name}", system.unload_model, name="unload_model")
    add.add_get("/metrics", metrics.metrics_handler, name="metrics")
    # The light client's wheel, for agents' containers (open, like /health).
    add.add_get(clients.CLIENT_PREFIX, clients.client_index, name="client_index")
    add.add_get(clients.CLIENT_PREFIX + "{wheel}", clients.client_wheel, name="client_wheel")
    # OpenAI-compatible speech to text.
    add.add_post("/v1/audio/transcriptions", openai_compat.transcriptions, name="openai_transcriptions")
    add.add_post("/v1/audio/translations", openai_compat.translations, name="openai_translations")
    add.add_get("/v1/models", openai_compat.list_models, name="openai_models")
    add.add_get("/v1/models/{model}", openai_compat.retrieve_model, name="openai_model")
    # The dashboard.
    add.add_get("/", dashboard.index, name="dashboard")
    add.add_get(dashboard.STATIC_PREFIX + "{name}", dashboard.asset, name="dashboard_asset")
    # State of the HTTP side: open streams, uploads being received, metrics, the client's wheel,
    # the OpenAPI document (and its route).
    streams.setup_streams(app)
    uploads.setup_uploads(app)
    clients.setup_clients(app)
    metrics.setup_metrics(app)
    openapi.setup_openapi_routes(app)
