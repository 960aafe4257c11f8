"""Logging: text (unchanged by default) or JSON lines, job ids on every line about a job, the
inference process's lines written by the server, and size-based rotation of --log-file."""

from __future__ import annotations

import json
import logging
import logging.handlers
import pickle
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ServerProcess, eval_clip, wait_for_status

from service import logs
from service.settings import Settings, parse_settings

CLIP = eval_clip("LDC93S1.wav")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in logs._installed:
        root.removeHandler(handler)
        handler.close()
    logs._installed.clear()
    root.setLevel(level)


def test_flags_and_environment() -> None:
    settings = parse_settings([], env={})
    assert (settings.log_format, settings.log_file, settings.log_max_mb, settings.log_backups) == (
        "text",
        None,
        50.0,
        5,
    )
    env = {
        "SERVICE_LOG_FORMAT": "json",
        "SERVICE_LOG_FILE": "/var/log/x.log",
        "SERVICE_LOG_MAX_MB": "2.5",
        "SERVICE_LOG_BACKUPS": "3",
    }
    settings = parse_settings([], env=env)
    assert (settings.log_format, settings.log_file, settings.log_max_mb, settings.log_backups) == (
        "json",
        Path("/var/log/x.log"),
        2.5,
        3,
    )
    settings = parse_settings(["--log-format", "text", "--log-file", "a.log", "--log-backups", "1"], env=env)
    assert (settings.log_format, settings.log_file, settings.log_backups) == ("text", Path("a.log"), 1)
    with pytest.raises(SystemExit):
        parse_settings(["--log-format", "xml"], env={})
    with pytest.raises(SystemExit):
        parse_settings(["--log-backups", "0"], env={})


def test_text_format_is_unchanged_and_names_the_job(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(Settings())
    worker_log = logging.getLogger("service.inference.worker")
    worker_log.info("job %s: started (attempt %d, model %s)", "a1", 1, "tiny.en")
    with logs.job_context("a1"):
        logging.getLogger("service.inference.models").info("model tiny.en loaded in 0.5 s")
    logging.getLogger("service").debug("not shown at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO service.inference.worker: "
        r"job a1: started \(attempt 1, model tiny.en\)",
        lines[0],
    )
    assert lines[1].endswith("INFO service.inference.models: model tiny.en loaded in 0.5 s [job a1]")


def test_json_lines_carry_job_id_extra_fields_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(Settings(log_format="json", log_level="DEBUG"))
    log = logging.getLogger("service.inference.worker")
    log.info("job %s: accepted", "j1", extra={"job_id": "j1", "bytes": 1234})
    with logs.job_context("j2"):
        try:
            raise ValueError("bad audio")
        except ValueError:
            log.exception("job %s: failed", "j2")
    log.debug("plain line")
    first, second, third = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "job j1: accepted" and first["job_id"] == "j1" and first["bytes"] == 1234
    assert (first["level"], first["logger"]) == ("INFO", "service.inference.worker")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    stamp = datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs(stamp.timestamp() - time.time()) < 60 and stamp.utcoffset() == timedelta(0)
    assert second["job_id"] == "j2" and second["level"] == "ERROR"
    assert second["exc"].startswith("Traceback") and "ValueError: bad audio" in second["exc"]
    assert "job_id" not in third and "exc" not in third and third["level"] == "DEBUG"


def test_inference_process_records_reach_the_servers_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    """The child's handler flattens each record so it pickles; the server writes it as its own."""
    settings = Settings(log_format="json")
    sent: list[bytes] = []
    logs.forward_to_parent(settings, lambda record: sent.append(pickle.dumps(record)))
    child_log = logging.getLogger("service.inference.models")
    with logs.job_context("c1"):
        child_log.info("model %s loaded", "tiny.en")
        try:
            {}["missing"]
        except KeyError:
            child_log.exception("decode failed")
    assert len(sent) == 2 and capsys.readouterr().err == ""

    logs.configure_logging(settings)  # now as the server
    for raw in sent:
        logs.handle_forwarded(pickle.loads(raw))
    loaded, failed = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert loaded["message"] == "model tiny.en loaded"
    assert (loaded["job_id"], loaded["source"], loaded["logger"]) == (
        "c1",
        "inference",
        "service.inference.models",
    )
    assert failed["job_id"] == "c1" and "KeyError: 'missing'" in failed["exc"]

    logs.configure_logging(Settings())
    logs.handle_forwarded(pickle.loads(sent[0]))
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith("INFO service.inference.models[inference]: model tiny.en loaded [job c1]")
    )


def test_a_broken_pipe_falls_back_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    def closed(record: logging.LogRecord) -> None:
        raise OSError("the pipe is closed")

    logs.forward_to_parent(Settings(), closed)
    logging.getLogger("service.inference.process").warning("still heard")
    assert capsys.readouterr().err.rstrip().endswith("service.inference.process[inference]: still heard")


def test_log_file_rotates_at_its_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "service.log"
    handler = logs.configure_logging(Settings(log_format="json", log_file=path, log_max_mb=1, log_backups=2))
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.maxBytes == 1024 * 1024 and handler.backupCount == 2
    handler.maxBytes = 500  # a tiny limit, so a few lines pass it
    log = logging.getLogger("service.inference.worker")
    for n in range(40):
        log.info("job %s: line %d %s", f"r{n}", n, "x" * 40, extra={"job_id": f"r{n}"})
    handler.flush()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["service.log", "service.log.1", "service.log.2"]  # older ones dropped
    for name in files:
        content = (path.parent / name).read_text()
        assert 0 < len(content) <= 500
        for line in content.splitlines():
            entry = json.loads(line)
            assert entry["message"].startswith(f"job {entry['job_id']}: line")
    last = json.loads((path.parent / "service.log").read_text().splitlines()[-1])
    assert last["job_id"] == "r39"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_server_writes_json_lines_with_job_ids_to_its_file(server_factory: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "service.log"
    server: ServerProcess = server_factory(
        extra_args=[
            "--device",
            "cpu",
            "--beam-size",
            "1",
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
            "--log-max-mb",
            "1",
        ]
    ).start()
    files = {"file": (CLIP.name, CLIP.read_bytes(), "application/octet-stream")}
    resp = requests.post(server.url + "/transcribe", files=files, data={"job_id": "logged"}, timeout=60)
    assert resp.status_code == 202, resp.text
    assert wait_for_status(server.url, "logged", {"completed", "failed"})["status"] == "completed"
    assert server.terminate() == 0

    entries = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line is JSON
    assert entries, "nothing was logged"
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        if "job logged" in entry["message"]:
            assert entry.get("job_id") == "logged", entry
    about_job = [e for e in entries if e.get("job_id") == "logged"]
    messages = [e["message"] for e in about_job]
    for fragment in ("job logged: accepted", "job logged: started", "job logged: completed"):
        assert any(m.startswith(fragment) for m in messages), (fragment, messages)
    from_child = [e for e in about_job if e.get("source") == "inference"]
    decoding = "job logged: decoding with model tiny.en"
    assert any(e["message"].startswith(decoding) for e in from_child), about_job
    assert any(e.get("source") == "inference" and "loaded in" in e["message"] for e in entries)
    assert any(e["message"].startswith("listening on http://") for e in entries)
    # With a log file, stderr stays quiet: the log lines went to the file only.
    assert "listening on" not in server.log() and "job logged" not in server.log()
