"""Settings come from flags, then environment variables, then built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, parse_settings


def test_defaults() -> None:
    settings = parse_settings([], env={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.model, settings.engine) == (
        "127.0.0.1",
        8765,
        "tiny.en",
        "openai-whisper",
    )
    assert settings.storage_dir == Path("service-storage")


def test_environment_then_flags() -> None:
    env = {"SERVICE_PORT": "9000", "SERVICE_STORAGE_DIR": "/srv/x", "SERVICE_MODEL": "base"}
    settings = parse_settings([], env=env)
    assert (settings.port, settings.storage_dir, settings.model) == (9000, Path("/srv/x"), "base")
    settings = parse_settings(["--port", "9100", "--max-upload-mb", "5"], env=env)
    assert settings.port == 9100
    assert settings.max_upload_bytes == 5 * 1024**2


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--engine", "nope"], {}, "invalid choice"),
        (["--beam-size", "0"], {}, "beam_size"),
        ([], {"SERVICE_PORT": "eighty"}, "SERVICE_PORT must be an integer"),
        (["--workers", "2"], {}, "needs --engine faster-whisper"),
        (["--workers", "0", "--engine", "faster-whisper"], {}, "workers must be at least 1"),
        (["--threads", "-1"], {}, "threads must be 0"),
        (["--compute-type", "int4"], {}, "invalid choice"),
    ],
)
def test_bad_values_exit_with_a_message(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv, env=env)
    assert exc.value.code != 0
    out = capsys.readouterr()
    assert fragment in out.err + str(exc.value.code)


def test_engine_threads_and_model_dir_settings() -> None:
    env = {
        "SERVICE_ENGINE": "faster-whisper",
        "SERVICE_WORKERS": "2",
        "SERVICE_THREADS": "4",
        "SERVICE_MODEL_DIR": "/models",
        "SERVICE_COMPUTE_TYPE": "float32",
    }
    settings = parse_settings([], env=env)
    assert (settings.engine, settings.workers, settings.threads) == ("faster-whisper", 2, 4)
    assert (settings.model_dir, settings.compute_type) == (Path("/models"), "float32")
    assert parse_settings([], env={}).model_dir is None
    settings = parse_settings(["--threads", "1", "--model-dir", "/m2"], env=env)
    assert (settings.threads, settings.model_dir) == (1, Path("/m2"))
