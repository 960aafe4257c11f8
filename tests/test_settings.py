"""Settings come from flags, then environment variables, then built-in defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.settings import OPTIONS, Option, Settings, parse_settings

REPO = Path(__file__).resolve().parent.parent


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


# -- every declared option, walked -----------------------------------------------------------------

# Values that a plain sample ("sample-x", default + 1) would not satisfy.
SAMPLES = {
    "redis_url": "rediss://elsewhere:6380/1",
    "log_level": "debug",
    "webhook_allowed_hosts": "a.example,B.example",
}
# Workers > 1 needs this engine; it is valid with every other option's sample.
BASE_ENV = {"SERVICE_ENGINE": "faster-whisper"}


def sample(option: Option) -> str:
    """A valid value, other than the default, as a flag or variable would give it."""
    if option.field in SAMPLES:
        return SAMPLES[option.field]
    if option.choices:
        return next(c for c in option.choices if c != option.default)
    if option.is_switch:
        return "false" if option.default else "true"
    if option.annotation in (int, float):
        return str(option.annotation(option.shown_default(None)) + 1)
    return "sample-x"


def flag_args(option: Option, value: str) -> list[str]:
    if option.is_switch:
        return [option.flag] if value == "true" else ["--no-" + option.flag[2:]]
    return [option.flag, value]


def help_text(capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--help"], env=env or {})
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_option_is_in_help_and_read_from_its_flag_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert len(OPTIONS) == len(dataclasses.fields(Settings)) >= 39
    text = help_text(capsys)
    defaults = Settings()
    for option in OPTIONS:
        assert option.flag in text and f"[{option.env}]" in text, option.field
        value = sample(option)
        from_env = parse_settings([], env={**BASE_ENV, option.env: value})
        assert getattr(from_env, option.field) != getattr(defaults, option.field), option.field
        from_flag = parse_settings(flag_args(option, value), env=BASE_ENV)
        assert from_flag == from_env, option.field
        if not option.is_switch:  # the flag beats its variable, which is then not even read
            assert parse_settings(flag_args(option, value), env={**BASE_ENV, option.env: "?"}) == from_env


def test_flag_names_units_and_lists() -> None:
    settings = parse_settings(
        ["--retention-days", "0.5", "--webhook-allowed-hosts", " A.example, ,b.example"],
        env={"SERVICE_MAX_UPLOAD_MB": "3", "SERVICE_TRANSCRIPT_CACHE": "off", "SERVICE_LOG_LEVEL": "warning"},
    )
    assert (settings.retention_seconds, settings.max_upload_bytes) == (43200.0, 3 * 1024**2)
    assert settings.webhook_allowed_hosts == ("a.example", "b.example")
    assert (settings.transcript_cache, settings.log_level) == (False, "WARNING")
    assert (
        parse_settings(["--no-transcript-cache"], env={"SERVICE_TRANSCRIPT_CACHE": "yes"}).transcript_cache
        is False
    )
    assert parse_settings(["--api-token", ""], env={"SERVICE_API_TOKEN": "t"}).api_token is None


def test_an_empty_variable_counts_as_unset() -> None:
    env = {option.env: "" for option in OPTIONS}
    assert parse_settings([], env=env) == Settings()


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.annotation in (int, float, bool) or o.choices])
def test_a_bad_value_of_any_typed_option_exits_naming_it(
    option: Option, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, env, name in (
        ([], {option.env: "maybe"}, option.env),
        ([f"{option.flag}=maybe"], {}, option.flag),
    ):
        with pytest.raises(SystemExit) as exc:
            parse_settings(argv, env=env)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert name in err and "maybe" in err, err


def test_model_fallback_takes_only_true_or_false(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_settings([], env={"SERVICE_MODEL_FALLBACK": " Yes"}).model_fallback is True
    with pytest.raises(SystemExit):
        parse_settings([], env={"SERVICE_MODEL_FALLBACK": "maybe"})
    assert "SERVICE_MODEL_FALLBACK must be true or false" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--max-upload-mb", "0"], {}, "--max-upload-mb must be more than 0"),
        ([], {"SERVICE_MAX_UPLOAD_MB": "1.5"}, "SERVICE_MAX_UPLOAD_MB must be an integer"),
        ([], {"SERVICE_ENGINE": "nope"}, "SERVICE_ENGINE must be one of openai-whisper, faster-whisper"),
        (["--log-level", "loud"], {}, "--log-level must be one of DEBUG"),
        ([], {"SERVICE_REDIS_URL": "http://x"}, "must start with redis://"),
        (["--redis-prefix", "a b"], {}, "--redis-prefix must be a non-empty word"),
        ([], {"SERVICE_LEASE_SECONDS": "0.5"}, "SERVICE_LEASE_SECONDS must be at least 1"),
        ([], {"SERVICE_WEBHOOK_TIMEOUT": "0"}, "SERVICE_WEBHOOK_TIMEOUT must be more than 0"),
        ([], {"SERVICE_WORKERS": "3"}, "needs --engine faster-whisper"),
    ],
)
def test_messages_say_what_is_allowed(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv, env=env)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_direct_construction_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        monkeypatch.setenv(option.env, sample(option))
    assert Settings() == parse_settings([], env={})
    assert Settings.engine == "openai-whisper"  # defaults stay readable off the class


def test_direct_construction_and_replace_validate() -> None:
    with pytest.raises(ValueError, match="beam_size"):
        Settings(beam_size=0)
    with pytest.raises(ValueError, match="needs --engine faster-whisper"):
        Settings(workers=2)
    settings = Settings(api_token="", webhook_allowed_hosts=("LocalHost", " "))
    assert (settings.api_token, settings.webhook_allowed_hosts) == (None, ("localhost",))
    with pytest.raises(ValueError, match="max_queue"):
        dataclasses.replace(settings, max_queue=-1)
    assert dataclasses.replace(settings, webhook_timeout=30).webhook_timeout == 30.0


def test_help_shows_defaults_from_the_environment_but_never_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text(
        capsys, {"SERVICE_PORT": "9000", "SERVICE_API_TOKEN": "hush", "SERVICE_WEBHOOK_SECRET": "k"}
    )
    assert "[SERVICE_PORT] (default 9000)" in text
    assert "hush" not in text and "(default k)" not in text


def test_readme_table_lists_every_option_with_its_default() -> None:
    rows = {
        m["flag"]: (m["env"], m["default"].strip("`"))
        for m in re.finditer(
            r"^\| `(?P<flag>--[a-z-]+)`[^|]*\| `(?P<env>SERVICE_[A-Z_]+)` \| (?P<default>[^|]*?) \|",
            (REPO / "README.md").read_text(),
            flags=re.M,
        )
    }
    assert set(rows) == {option.flag for option in OPTIONS}
    for option in OPTIONS:
        env, default = rows[option.flag]
        assert env == option.env, option.flag
        declared = option.shown_default(None) or "none"
        if option.annotation in (int, float):
            assert float(default) == float(declared), option.flag
        else:
            assert default == declared, option.flag
