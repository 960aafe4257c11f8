"""GET /openapi.json: the document agrees with the routes the app registers (both ways), is
valid OpenAPI, is open without a token, and a live server with the real model answers
schemathesis-generated requests within it (no undocumented server errors, status codes,
content types, headers or bodies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import schemathesis
from conftest import FakeEngine, ServerProcess, eval_clip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api import ClientFactory, form, leftover_files, wait_status

from service.api import auth, dashboard, openai_compat, openapi
from service.app import create_app
from service.inference.worker import WorkerState
from service.jobs.formats import FORMATS
from service.jobs.job import JOB_ID_PATTERN, MAX_PRIORITY, MIN_PRIORITY, PRIORITIES, Job, JobStatus, Task
from service.jobs.view import JobSummary, JobView
from service.settings import Settings

# Streams run until the job ends, and the WebSocket route only makes sense as an upgrade:
# generated requests leave them out (they are still checked against the routes below).
NOT_GENERATED = {("GET", "/events/{job_id}"), ("GET", "/ws/{job_id}")}
CLIP = eval_clip("LDC93S1.wav")
# The longest a generated /status?wait= may hold a request (the service allows 60 s).
MAX_GENERATED_WAIT_S = 0.5


def _registered(tmp_path: Path) -> set[tuple[str, str]]:
    return openapi.route_operations(create_app(Settings(storage_dir=tmp_path / "storage")))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


# -- the document and the router -----------------------------------------------------------------


def test_every_registered_route_is_documented_and_vice_versa(tmp_path: Path) -> None:
    registered = _registered(tmp_path)
    documented = openapi.operations(openapi.build_document()["paths"])
    assert registered - documented == set(), "routes with no entry in the OpenAPI document"
    assert documented - registered == set(), "documented routes the app does not register"


def test_static_folder_counts_as_one_get(tmp_path: Path) -> None:
    app = create_app(Settings(storage_dir=tmp_path / "storage"))
    app.router.add_static("/static", tmp_path)
    assert ("GET", "/static/{path}") in openapi.route_operations(app)


def test_document_is_well_formed() -> None:
    document = openapi.build_document()
    assert document["openapi"].startswith("3.1")
    for ref in set(_refs(document)):
        assert _resolve(document, {"$ref": ref}), ref
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            # Every path parameter in the template is declared, and no other.
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
            for code, response in operation["responses"].items():
                response = _resolve(document, response)
                assert response["description"], (method, path, code)
                if int(code) >= 400 and (path, code) != ("/health", "503"):  # 503: Health, as 200
                    schema = response["content"]["application/json"]["schema"]
                    expected = "OpenAIError" if openai_compat.is_openai_path(path) else "Error"
                    assert schema == {"$ref": f"#/components/schemas/{expected}"}, (method, path, code)
            # Open without a token exactly where the token check lets requests through.
            concrete = path.replace("{name}", "dashboard.js")
            open_route = concrete in auth.OPEN_PATHS or concrete.startswith(auth.OPEN_PREFIXES)
            assert ("security" in operation and operation["security"] == []) is open_route, path
            assert ("401" in operation["responses"]) is not open_route, path
    assert len(operation_ids) == len(set(operation_ids))
    # Loading it is schemathesis' own validation of the OpenAPI structure.
    assert len(list(schemathesis.openapi.from_dict(document).get_all_operations())) == len(operation_ids)


def test_route_table_names_the_routes_the_app_registers(tmp_path: Path) -> None:
    """Each table entry's route name is registered with that method and path, and every named
    route has an entry: the names are the contract with the route table in routes.py."""
    app = create_app(Settings(storage_dir=tmp_path / "storage"))
    for op in openapi.OPERATIONS:
        resource = app.router[op.name]
        assert resource.canonical == op.path, op.name
        assert op.method in {route.method for route in resource}, op.name
    assert set(app.router.named_resources()) == {op.name for op in openapi.OPERATIONS}


def test_document_takes_enums_and_patterns_from_the_code() -> None:
    document = openapi.build_document()
    schemas = document["components"]["schemas"]
    assert _resolve(document, schemas["JobView"]["properties"]["status"])["enum"] == [
        s.value for s in JobStatus
    ]
    assert _resolve(document, schemas["JobSummary"]["properties"]["task"])["enum"] == [t.value for t in Task]
    for name in ("JobView", "JobSummary", "JobAccepted", "Cancelled"):
        assert schemas[name]["properties"]["job_id"]["pattern"] == JOB_ID_PATTERN.pattern, name
    form = document["paths"]["/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["job_id"]["pattern"] == JOB_ID_PATTERN.pattern
    worker = _resolve(document, schemas["Health"]["properties"]["worker"])
    assert worker["enum"] == [state.value for state in WorkerState]
    assert schemas["JobSummary"]["properties"]["priority_name"]["enum"] == list(PRIORITIES)
    levels, numbers = form["properties"]["priority"]["anyOf"]
    assert levels["enum"] == list(PRIORITIES)
    assert (numbers["minimum"], numbers["maximum"]) == (MIN_PRIORITY, MAX_PRIORITY)
    status = next(p for p in document["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "status")
    assert all(s.value in status["schema"]["pattern"] for s in JobStatus)


def _conforms(document: dict[str, Any], name: str, body: Any) -> None:
    """`body` is valid against the document's schema `name` (its $refs resolved in the document)."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    Draft202012Validator(root).validate(body)


async def test_real_bodies_conform_to_the_models(settings: Settings, aiohttp_client: ClientFactory) -> None:
    """A real job, run to the end: its /status body is a JobView (the document's schema, and the
    model reads it back unchanged), and the lists that show it conform too."""
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    upload = form(data=CLIP.read_bytes(), job_id="view-1", word_timestamps="true", priority="high")
    assert (await client.post("/transcribe", data=upload)).status == 202
    body = await wait_status(client, "view-1", {"completed"})
    document = openapi.build_document()
    _conforms(document, "JobView", body)
    assert JobView.model_validate(body).body() == body
    assert body["transcript"] and body["options"] == {"word_timestamps": True}
    jobs = await (await client.get("/jobs")).json()
    _conforms(document, "JobList", jobs)
    assert JobSummary.model_validate(jobs["jobs"][0]).body() == jobs["jobs"][0]
    _conforms(document, "QueueView", await (await client.get("/queue")).json())
    _conforms(document, "Health", await (await client.get("/health")).json())


def test_upload_documents_every_form_field() -> None:
    from service.usecases.submit import FIELDS

    form = openapi.PATHS["/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {"file", *FIELDS}
    responses = openapi.PATHS["/transcribe"]["post"]["responses"]
    assert {"200", "202", "400", "401", "409", "413", "415", "429", "503"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]
    assert "Location" in responses["202"]["headers"]


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_openai_upload_documents_every_form_field(path: str) -> None:
    post = openapi.PATHS[path]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"file", *openai_compat._FIELDS}
    assert form["properties"]["response_format"]["enum"] == list(openai_compat.RESPONSE_FORMATS)
    responses = post["responses"]
    assert {"200", "400", "401", "404", "409", "413", "429", "500", "503", "504"} <= set(responses)
    assert "415" not in responses  # undecodable audio is OpenAI's 400 there
    assert {"X-Job-Id", "X-Model"} <= set(responses["200"]["headers"])
    assert "x-should-retry" in responses["500"]["headers"] and "x-should-retry" in responses["409"]["headers"]
    # Every content type a response_format renders as is documented.
    content = responses["200"]["content"]
    result = {"text": "hi", "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": "hi"}]}
    job = cast(Job, SimpleNamespace(job_id="oai-x", task=Task.TRANSCRIBE))  # render reads only these
    for fmt in openai_compat.RESPONSE_FORMATS:
        _, content_type = openai_compat.render(result, fmt, job)
        assert content_type.split(";")[0] in content, fmt


def test_download_documents_every_format() -> None:
    get = openapi.PATHS["/download/{job_id}"]["get"]
    fmt = next(p for p in get["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == list(FORMATS)
    content = get["responses"]["200"]["content"]
    for name, (content_type, _) in FORMATS.items():
        assert name in content[content_type.split(";")[0]]["x-formats"]


async def test_openapi_json_is_open_with_a_token(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", api_token="s3cret-token")
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    assert openapi.operations(document["paths"]) == openapi.route_operations(client.app)
    assert (await client.get("/jobs")).status == 401
    assert (await client.get("/metrics")).status == 401
    # /v1 answers the token check in OpenAI's shape.
    resp = await client.get("/v1/models")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    # The dashboard's page and assets are open.
    assert (await client.get("/")).content_type == "text/html"
    assert (await client.get("/static/dashboard.css")).content_type == "text/css"
    resp = await client.get("/static/nope.js")
    assert resp.status == 404 and "error" in await resp.json()
    # The same document on every request.
    assert await (await client.get("/openapi.json")).json() == document


# schemathesis found a bad part header answered 500 (aiohttp's multipart reader raises
# ValueError or an HttpProcessingError for a malformed body, which went unhandled); these are
# that bug's family. A malformed body is the client's mistake: 400, and nothing stored.
MALFORMED_UPLOADS = {
    "bad part header": (
        "boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="\xc2\x97e\x04"\r\n\r\n{}\r\n--XX--\r\n',
    ),
    "no boundary": ("", b"--XX\r\n\r\n"),
    "boundary too long": ("boundary=" + "a" * 100, b"--XX\r\n\r\n"),
    "no starting boundary": ("boundary=XX", b"hello"),
    "truncated file": (
        "boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_UPLOADS))
async def test_malformed_multipart_is_400(
    name: str, settings: Settings, aiohttp_client: ClientFactory
) -> None:
    params, body = MALFORMED_UPLOADS[name]
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    content_type = "multipart/form-data" + (f"; {params}" if params else "")
    resp = await client.post("/transcribe", data=body, headers={"Content-Type": content_type})
    assert resp.status == 400, await resp.text()
    assert "malformed" in (await resp.json())["error"]
    # A compressed request body is refused before it is read (415), matching or not.
    resp = await client.post(
        "/transcribe",
        data=b"--XX\r\n\r\nabc\r\n--XX--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=XX", "Content-Encoding": "gzip"},
    )
    assert resp.status == 415, await resp.text()
    assert leftover_files(settings) == []


# -- schemathesis against a live server -----------------------------------------------------------


def _server_error_unless_documented_503(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, except a 503 the operation documents (/health while not ready, any
    upload or stream while stopping)."""
    if response.status_code == 503 and "503" in case.operation.definition.raw["responses"]:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    _server_error_unless_documented_503,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

CONFIG = {"generation": {"deterministic": True, "database": "none"}}
LIVE_OPERATIONS = sorted(openapi.operations(openapi.PATHS) - NOT_GENERATED, key=lambda op: (op[1], op[0]))
MAX_EXAMPLES = 30
# Generated /v1/audio bodies are nearly all refused before a decode, but each accepted one
# would hold the request for a real transcription: fewer of them.
MAX_EXAMPLES_FOR = {("POST", "/v1/audio/transcriptions"): 12, ("POST", "/v1/audio/translations"): 12}


KNOWN_JOB = "openapi-known"  # a completed job the fixture makes, so generated requests meet one
# Names that exist, for the other routes that look something up by its name in the path.
KNOWN_PATH_PARAMETERS = {
    "/static/{name}": {"name": "dashboard.js"},
    "/v1/models/{model}": {"model": "whisper-1"},
}


@dataclass
class Live:
    schema: Any  # schemathesis' OpenApiSchema, loaded from the server's /openapi.json
    url: str


def _validate(loaded: Any, method: str, path: str, **fields: Any) -> schemathesis.Response:
    """One explicit request, checked as the generated ones are; returns the raw response."""
    case = loaded[path][method].Case(**fields)
    response = case.call(timeout=90)
    case.validate_response(response, checks=CHECKS)
    return response


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A real server (tiny.en) with one completed job, and its document as schemathesis loaded
    it. The module's operations share it; --max-queue keeps generated uploads bounded."""
    root = tmp_path_factory.mktemp("openapi")
    server = ServerProcess(root / "storage", extra_args=["--max-queue", "50", "--beam-size", "1"])
    try:
        server.start()
        loaded = schemathesis.openapi.from_url(
            f"{server.url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG)
        )
        body = {"file": CLIP.read_bytes(), "job_id": KNOWN_JOB, "word_timestamps": "true"}
        _validate(loaded, "POST", "/transcribe", body=body, media_type="multipart/form-data")
        done = _validate(
            loaded, "GET", "/status/{job_id}", path_parameters={"job_id": KNOWN_JOB}, query={"wait": 60}
        )
        assert done.json()["status"] == "completed", done.text
        yield Live(loaded, server.url)
    finally:
        server.kill()


@pytest.mark.slow
def test_live_known_job_conforms_to_the_document(live: Live) -> None:
    """The answers generated requests rarely reach: accepted uploads, real status bodies, every
    download format, job lists and the queue with a job in them, streams, models."""
    loaded, job = live.schema, {"job_id": KNOWN_JOB}
    upload = {"file": CLIP.read_bytes(), "job_id": KNOWN_JOB, "word_timestamps": "true"}
    again = _validate(loaded, "POST", "/transcribe", body=upload, media_type="multipart/form-data")
    assert again.status_code == 200 and again.headers["location"] == [f"/status/{KNOWN_JOB}"]
    other = {**upload, "file": CLIP.read_bytes() + b"\0\0"}
    assert (
        _validate(loaded, "POST", "/transcribe", body=other, media_type="multipart/form-data").status_code
        == 409
    )
    # A second job, cancelled while it waits or runs (or 409 if it already ended).
    second = {"file": CLIP.read_bytes()[:-2] + b"\1\1", "job_id": "openapi-cancel", "priority": "low"}
    assert (
        _validate(loaded, "POST", "/transcribe", body=second, media_type="multipart/form-data").status_code
        == 202
    )
    for path in ("/jobs", "/queue"):
        assert _validate(loaded, "GET", path).status_code == 200
    assert (
        _validate(loaded, "GET", "/jobs", query={"status": "completed,queued", "limit": 1}).status_code == 200
    )
    cancel = _validate(loaded, "DELETE", "/jobs/{job_id}", path_parameters={"job_id": "openapi-cancel"})
    assert cancel.status_code in (200, 409)
    assert _validate(loaded, "DELETE", "/jobs/{job_id}", path_parameters=job).status_code == 409
    status = _validate(loaded, "GET", "/status/{job_id}", path_parameters=job).json()
    assert status["transcript"] and status["options"] == {"word_timestamps": True}
    for fmt in FORMATS:
        response = _validate(loaded, "GET", "/download/{job_id}", path_parameters=job, query={"format": fmt})
        assert response.status_code == (400 if fmt == "rttm" else 200), (fmt, response.text)  # not diarized
    # A finished job's SSE stream is its final state, then the end of the response.
    events = _validate(loaded, "GET", "/events/{job_id}", path_parameters=job)
    assert events.status_code == 200 and "event: state" in events.text
    assert (
        _validate(
            loaded, "GET", "/events/{job_id}", path_parameters=job, query={"last_event_id": -1}
        ).status_code
        == 400
    )
    # Without the upgrade headers the WebSocket route answers JSON errors.
    assert _validate(loaded, "GET", "/ws/{job_id}", path_parameters=job).status_code == 400
    assert _validate(loaded, "GET", "/ws/{job_id}", path_parameters={"job_id": "nope"}).status_code == 404
    assert (
        _validate(loaded, "POST", "/models/{name}/load", path_parameters={"name": "tiny.en"}).status_code
        == 200
    )
    assert (
        _validate(loaded, "DELETE", "/models/{name}", path_parameters={"name": "tiny.en"}).status_code == 409
    )
    assert _validate(loaded, "GET", "/health").status_code == 200
    assert "whisper_jobs_finished" in _validate(loaded, "GET", "/metrics").text
    # The dashboard's page and every asset it ships.
    assert _validate(loaded, "GET", "/").status_code == 200
    for asset in sorted(p.name for p in dashboard.ASSETS.iterdir() if p.name != dashboard.INDEX):
        response = _validate(loaded, "GET", "/static/{name}", path_parameters={"name": asset})
        assert response.status_code == 200, asset
    assert _validate(loaded, "GET", "/static/{name}", path_parameters={"name": "x.js"}).status_code == 404
    # The OpenAI-compatible routes: one real transcription, then the cache answers other formats.
    assert _validate(loaded, "GET", "/v1/models").status_code == 200
    model = {"model": "whisper-1"}
    assert _validate(loaded, "GET", "/v1/models/{model}", path_parameters=model).status_code == 200
    missing = {"model": "no-such-model"}
    assert _validate(loaded, "GET", "/v1/models/{model}", path_parameters=missing).status_code == 404
    clip = CLIP.read_bytes()[:-2] + b"\2\2"
    for fmt in openai_compat.RESPONSE_FORMATS:
        body = {"file": clip, "model": "whisper-1", "response_format": fmt}
        if fmt == "verbose_json":
            body["timestamp_granularities[]"] = ["word"]
        response = _validate(
            loaded, "POST", "/v1/audio/transcriptions", body=body, media_type="multipart/form-data"
        )
        assert response.status_code == 200, (fmt, response.text)
        assert response.headers["x-job-id"][0].startswith("oai-")
    # Translation needs a multilingual model; this server's default (tiny.en) is English-only.
    body = {"file": clip, "model": "whisper-1"}
    response = _validate(
        loaded, "POST", "/v1/audio/translations", body=body, media_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), LIVE_OPERATIONS, ids=[f"{m} {p}" for m, p in LIVE_OPERATIONS])
def test_live_server_conforms_to_its_document(live: Live, method: str, path: str) -> None:
    operation = live.schema[path][method]
    raw = operation.definition.raw
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    if raw.get("parameters") or raw.get("requestBody"):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    known = {"job_id": KNOWN_JOB} if "{job_id}" in path else KNOWN_PATH_PARAMETERS.get(path)
    if known:  # some requests about a job, an asset or a model that exists
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))

    @settings(
        max_examples=MAX_EXAMPLES_FOR.get((method, path), MAX_EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def conforms(case: schemathesis.Case) -> None:
        if case.path == "/status/{job_id}" and isinstance(case.query, dict):
            wait = case.query.get("wait")
            if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_GENERATED_WAIT_S:
                case.query["wait"] = MAX_GENERATED_WAIT_S
        response = case.call(timeout=30)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:  # every error is JSON with an `error` (OpenAI's shape on /v1)
            error = json.loads(response.content).get("error")
            assert isinstance(error, dict if path.startswith("/v1/") else str), response.content

    conforms()
