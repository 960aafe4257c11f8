"""The command-line client: `transcription-client <command>`, and `python -m service <command>`.

Every subcommand is a thin layer over `mcp_tools.client.TranscriptionClient`, so the terminal
gets the same retries, streamed uploads and actionable errors as the agents' tools. The service's
own command line (service/cli.py) is this one plus `serve`: `main` takes the program name and
parser it shows, so both read as themselves.

Exit codes: 0 ok; 1 the service answered but the work did not succeed (a job failed or was
cancelled, an upload or a cancel was refused, no such job); 2 the command could not run as
given (bad arguments, a missing local file, nothing answering at the URL, a wrong token).
Errors are one line on stderr; results go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from mcp_tools.client import (
    FINISHED,
    FORMATS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TASKS,
    TOKEN_ENV,
    AudioFileError,
    ClientOutdated,
    JobConflict,
    RejectedUpload,
    ServiceBusy,
    ServiceUnreachable,
    Submission,
    TranscriptionClient,
    TranscriptionError,
    Unauthorized,
    WaitTimeout,
    check_audio_file,
    check_priority,
    priority_name,
)

URL_ENV = "TRANSCRIPTION_SERVICE_URL"
DEFAULT_URL = "http://127.0.0.1:8765"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# One status long-poll while waiting: short enough that the progress bar moves.
POLL_S = 2.0
# Without a terminal, a progress line at least this often even when nothing changed.
PLAIN_EVERY_S = 10.0
BAR_WIDTH = 30
PROG = "transcription-client"
SUBCOMMANDS = ("submit", "status", "download", "cancel", "jobs", "queue", "models", "health")


class CliError(Exception):
    """A one-line message for stderr and the exit status that goes with it."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message = message
        self.code = code


# -- arguments --------------------------------------------------------------------------------


def _priority(raw: str) -> str:
    """Checked here so a typo is a usage error before anything is uploaded."""
    try:
        return check_priority(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seconds cannot be negative")
    return value


DESCRIPTION = "Queue audio on a Whisper transcription service and fetch transcripts from a terminal."
EXIT_CODES = (
    "Exit codes: 0 ok, 1 a job failed or the service refused the request, 2 usage error or "
    "service unreachable."
)


class _Paragraphs(argparse.HelpFormatter):
    """Wraps each paragraph (blank-line separated) of the description and epilog on its own, so
    the exit codes start a paragraph of their own whatever text comes before them."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            super(_Paragraphs, self)._fill_text(part, width, indent) for part in text.split("\n\n")
        )


def build_parser(
    prog: str = PROG,
    description: str = DESCRIPTION,
    epilog: str = EXIT_CODES,
    serve: bool = False,
) -> argparse.ArgumentParser:
    """The client subcommands. With `serve`, `serve` is listed too (the service's own command
    line parses its flags elsewhere)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_Paragraphs
    )
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the service [{URL_ENV}] (default %(default)s)",
    )
    connection.add_argument(
        "--token", default=None, help=f"API token, when the service has --api-token [{TOKEN_ENV}]"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the service's JSON instead of a table")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    if serve:
        commands.add_parser(
            "serve",
            help=f"run the service (the default); `{prog} serve --help` lists its flags",
            add_help=False,
        )

    submit = commands.add_parser(
        "submit",
        parents=[connection],
        help="queue audio files; with --wait, show progress and print the transcripts",
        description="Queue each file (all are uploaded before any is waited on). Without --wait, "
        "prints one job id per line. Submitting the same file again is a safe retry: it names the "
        "same job.",
    )
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio: WAV, MP3, FLAC, ...")
    submit.add_argument("--wait", action="store_true", help="wait for the jobs and print the transcripts")
    submit.add_argument("--format", choices=FORMATS, default="txt", help="transcript format (default txt)")
    submit.add_argument(
        "--priority",
        type=_priority,
        help=f"urgent, high, normal (default), low, or {MIN_PRIORITY}..{MAX_PRIORITY}; higher runs first",
    )
    submit.add_argument("--model", help="a Whisper model name; the service's default when absent")
    submit.add_argument("--language", help="a language code or name (en, german); detected when absent")
    submit.add_argument("--task", choices=TASKS)
    submit.add_argument("--job-id", help="your own id (one file only); derived from the file otherwise")
    submit.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="DIR",
        help="write <job_id>.<format> files into DIR instead of stdout (implies --wait)",
    )

    status = commands.add_parser(
        "status",
        parents=[connection, as_json],
        help="a job's state; exits 1 when it failed or was cancelled",
    )
    status.add_argument("job_id", metavar="JOB")
    status.add_argument(
        "--wait", type=_seconds, metavar="SECONDS", help="answer as soon as the job ends, or after SECONDS"
    )

    download = commands.add_parser("download", parents=[connection], help="a completed job's transcript")
    download.add_argument("job_id", metavar="JOB")
    download.add_argument("--format", choices=FORMATS, default="txt", help="default txt")
    download.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB")

    jobs = commands.add_parser("jobs", parents=[connection, as_json], help="list jobs, newest first")
    jobs.add_argument("--status", help="only these states, comma-separated (queued,processing,...)")
    jobs.add_argument("--limit", type=_positive_int, help="at most this many (service default 50)")
    jobs.add_argument("--cursor", help="the next page: next_cursor of the last listing")

    commands.add_parser(
        "queue", parents=[connection, as_json], help="what runs now, what runs next, and the wait"
    )
    commands.add_parser("models", parents=[connection, as_json], help="model names, which are loaded")
    commands.add_parser(
        "health", parents=[connection, as_json], help="is it up and ready; exits 1 when not ready"
    )
    return parser


def main(
    argv: Sequence[str] | None = None, prog: str = PROG, parser: argparse.ArgumentParser | None = None
) -> int:
    """Entry point of the `transcription-client` console script; the service's command line calls
    it with its own name and parser (which lists `serve`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = parser or build_parser(prog)
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ns.prog = prog
    handler = HANDLERS[ns.command]
    if ns.command == "submit" and ns.job_id and len(ns.files) > 1:
        parser.error("--job-id names one job: give a single FILE with it")
    try:
        with _client(ns) as client:
            return handler(client, ns)
    except CliError as exc:
        return _fail(exc.message, exc.code)
    except (ServiceUnreachable, Unauthorized, AudioFileError, ClientOutdated) as exc:
        return _fail(_with_hint(exc), EXIT_USAGE)
    except TranscriptionError as exc:
        return _fail(exc.message, EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted; jobs already queued keep running on the service.", EXIT_INTERRUPTED)
    except BrokenPipeError:  # `... | head`: the reader has gone, which is not an error here
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _client(ns: argparse.Namespace) -> TranscriptionClient:
    try:
        return TranscriptionClient(ns.url, api_token=ns.token)
    except TranscriptionError as exc:
        raise CliError(f"{exc.message} Fix --url or {URL_ENV}.", EXIT_USAGE) from None


def _with_hint(exc: TranscriptionError) -> str:
    if isinstance(exc, ServiceUnreachable):
        return f"{exc.message} If it runs elsewhere, pass --url or set {URL_ENV}."
    if isinstance(exc, Unauthorized):
        return f"{exc.message} Or pass --token TOKEN."
    return exc.message


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


# -- submit -----------------------------------------------------------------------------------


def cmd_submit(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    """Upload everything first, so the service works through the batch while we wait on it."""
    files = [check_audio_file(path) for path in ns.files]  # all present, or nothing is sent
    output: Path | None = ns.output
    if output is not None:
        if output.exists() and not output.is_dir():
            raise CliError(f"--output {output} is a file; give a directory for the transcripts.", EXIT_USAGE)
        output.mkdir(parents=True, exist_ok=True)
    failed = 0
    submitted: list[Submission] = []
    for path in files:
        try:
            submission = client.upload(
                path,
                job_id=ns.job_id,
                model=ns.model,
                language=ns.language,
                task=ns.task,
                priority=ns.priority,
            )
        except (RejectedUpload, JobConflict, ServiceBusy) as exc:
            _fail(exc.message, EXIT_FAILED)
            failed += 1
            continue
        submitted.append(submission)
        again = "" if submission.created else " (already submitted)"
        print(f"{path.name}: job {submission.job_id} {submission.status}{again}", file=sys.stderr)
    if not (ns.wait or output is not None):
        for submission in submitted:
            print(submission.job_id)
        if submitted:
            print(f"follow with: {ns.prog} status JOB --wait 60", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_OK

    many = len(submitted) > 1
    for submission in submitted:
        final = wait_with_progress(client, submission.job_id, sys.stderr)
        if final.get("status") != "completed":
            reason = final.get("error") or final.get("message") or ""
            _fail(f"job {submission.job_id} {final.get('status')}: {reason}".rstrip(": "), EXIT_FAILED)
            failed += 1
            continue
        text = client.download(submission.job_id, ns.format)
        if output is not None:
            target = output / f"{submission.job_id}.{ns.format}"
            target.write_text(text, encoding="utf-8")
            print(target)
        else:
            if many:
                print(f"==> {submission.job_id} <==")
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
    return EXIT_FAILED if failed else EXIT_OK


class Progress:
    """A `\\r`-redrawn bar on a terminal; elsewhere (logs, CI) a plain line per change or every 10 s."""

    def __init__(self, job_id: str, stream: TextIO):
        self.job_id = job_id
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_line = ""
        self._last_at = 0.0

    def update(self, body: dict[str, Any]) -> None:
        status = str(body.get("status"))
        fraction = min(1.0, max(0.0, float(body.get("progress") or 0.0)))
        detail = status
        if status == "queued" and body.get("queue_position"):
            detail = f"queued, position {body['queue_position']}"
        if self.tty:
            filled = round(fraction * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"{self.job_id} [{bar}] {fraction:4.0%} {detail}"
            width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn with \r
            self.stream.write(f"\r\x1b[K{line[-width:] if len(line) > width else line}")
            self.stream.flush()
            return
        line = f"{self.job_id}: {detail} {fraction:.0%}"
        now = time.monotonic()
        if line != self._last_line or now - self._last_at >= PLAIN_EVERY_S:
            print(line, file=self.stream, flush=True)
            self._last_line, self._last_at = line, now

    def finish(self, body: dict[str, Any]) -> None:
        if self.tty:
            self.update(body)
            self.stream.write("\n")
        elapsed = time.monotonic() - self.started
        print(f"{self.job_id}: {body.get('status')} after {elapsed:.1f} s", file=self.stream, flush=True)


def wait_with_progress(client: TranscriptionClient, job_id: str, stream: TextIO) -> dict[str, Any]:
    """Short long-polls, so the bar moves while the job runs and we still hear of the end at once."""
    progress = Progress(job_id, stream)
    body = client.status(job_id)  # where it stands right now, before the first long-poll
    while body.get("status") not in FINISHED:
        progress.update(body)
        asked = time.monotonic()
        body = client.status(job_id, wait=POLL_S)
        if body.get("status") not in FINISHED and time.monotonic() - asked < POLL_S / 4:
            time.sleep(POLL_S / 2)  # a server that does not long-poll: do not spin
    progress.finish(body)
    return body


# -- status, download, cancel -----------------------------------------------------------------


def cmd_status(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    if ns.wait:
        try:
            body = client.wait(ns.job_id, timeout=ns.wait)
        except WaitTimeout as exc:
            body = exc.status  # still running: show where it is, which is the answer asked for
    else:
        body = client.status(ns.job_id)
    if ns.json:
        _print_json(body)
    else:
        print(_status_text(body))
    return EXIT_FAILED if body.get("status") in ("failed", "cancelled") else EXIT_OK


def _status_text(body: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [
        ("job", str(body.get("job_id"))),
        ("status", str(body.get("status"))),
        ("progress", _percent(body.get("progress"))),
    ]
    if body.get("queue_position"):
        rows.append(("queue position", str(body["queue_position"])))
    for key in ("message", "error", "note"):
        if body.get(key):
            rows.append((key, str(body[key])))
    rows += [
        ("model", _text(body.get("model"))),
        ("language", _text(body.get("language"))),
        ("task", _text(body.get("task"))),
        ("priority", _priority_text(body)),
        ("audio", _duration(body.get("duration_s"))),
        ("attempts", _text(body.get("attempts"))),
        ("created", _time(body.get("created_at"))),
        ("started", _time(body.get("started_at"))),
        ("finished", _time(body.get("completed_at"))),
    ]
    if body.get("transcript"):
        text = " ".join(str(body["transcript"]).split())
        rows.append(("transcript", text if len(text) <= 200 else text[:197] + "..."))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def cmd_download(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    text = client.download(ns.job_id, ns.format)
    if ns.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        target = Path(ns.output)
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {target}: {exc.strerror or exc}.", EXIT_USAGE) from None
        print(f"wrote {target} ({ns.format}, {len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    body = client.cancel(ns.job_id)
    print(
        f"job {body.get('job_id')} cancelled (was {body.get('previous_status')}). {body.get('message', '')}"
    )
    return EXIT_OK


# -- listings ---------------------------------------------------------------------------------


def cmd_jobs(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    body = client.jobs(status=ns.status, limit=ns.limit, cursor=ns.cursor)
    if ns.json:
        _print_json(body)
        return EXIT_OK
    listed = body.get("jobs") or []
    if not listed:
        print("no jobs" + (f" with status {ns.status}" if ns.status else ""))
    else:
        print(
            _table(
                ("JOB", "STATUS", "PROGRESS", "PRIORITY", "MODEL", "AUDIO", "CREATED", "FILE"),
                [
                    (
                        str(job.get("job_id")),
                        str(job.get("status")),
                        _percent(job.get("progress")),
                        _priority_text(job),
                        _text(job.get("model")),
                        _duration(job.get("duration_s")),
                        _time(job.get("created_at")),
                        _text(job.get("filename")),
                    )
                    for job in listed
                ],
            )
        )
    if body.get("next_cursor"):
        print(f"more: {ns.prog} jobs --cursor {body['next_cursor']}", file=sys.stderr)
    return EXIT_OK


def cmd_queue(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    body = client.queue()
    if ns.json:
        _print_json(body)
        return EXIT_OK
    running = body.get("running") or []
    queued = body.get("queued") or []
    if running:
        print("running:")
        print(
            _table(
                ("JOB", "PROGRESS", "PRIORITY", "AUDIO", "REMAINING"),
                [
                    (
                        str(job.get("job_id")),
                        _percent(job.get("progress")),
                        _priority_text(job),
                        _duration(job.get("duration_s")),
                        _duration(job.get("estimated_remaining_s")),
                    )
                    for job in running
                ],
            )
        )
    if queued:
        print("queued, in run order:")
        print(
            _table(
                ("POS", "JOB", "PRIORITY", "AUDIO", "STARTS IN"),
                [
                    (
                        str(job.get("position")),
                        str(job.get("job_id")),
                        _priority_text(job),
                        _duration(job.get("duration_s")),
                        _duration(job.get("estimated_start_s")),
                    )
                    for job in queued
                ],
            )
        )
    if not running and not queued:
        print("nothing running, nothing queued")
    rtf = body.get("real_time_factor")
    print(
        f"{body.get('queue_length', len(queued))} queued, {body.get('workers')} worker(s); "
        f"a new job would start in about {_duration(body.get('estimated_wait_s'))}"
        + (f" (real-time factor {rtf:.2f})" if rtf is not None else "")
    )
    return EXIT_OK


def cmd_models(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    body = client.models()
    if ns.json:
        _print_json(body)
        return EXIT_OK
    rows = [
        (
            str(model.get("name")),
            _yes(model.get("default")),
            _yes(model.get("loaded")),
            _yes(model.get("offline")),
            _yes(model.get("on_disk")),
            f"{model['approx_memory_mb']:.0f} MB" if model.get("approx_memory_mb") is not None else "",
        )
        for model in body.get("models") or []
    ]
    print(_table(("MODEL", "DEFAULT", "LOADED", "OFFLINE", "ON DISK", "MEMORY"), rows))
    print(f"engine {body.get('engine')}, default {body.get('default')}")
    return EXIT_OK


def cmd_health(client: TranscriptionClient, ns: argparse.Namespace) -> int:
    body = client.health()
    ready = (
        body.get("status") == "ok"
        and bool(body.get("model_loaded"))
        and body.get("worker")
        in (
            "ready",
            "busy",
        )
    )
    if ns.json:
        _print_json(body)
    else:
        keys = ("status", "worker", "model", "model_loaded", "engine", "device", "workers", "queue_size")
        rows = [(key, _text(body.get(key))) for key in keys]
        rows.append(("processing", ", ".join(body.get("active_jobs") or []) or "-"))
        rows.append(("uptime", _duration(body.get("uptime_s"))))
        rows.append(("version", _text(body.get("version"))))
        if body.get("error"):
            rows.append(("error", str(body["error"])))
        width = max(len(key) for key, _ in rows)
        print(f"{client.base_url}: {'ready' if ready else 'NOT READY'}")
        print("\n".join(f"  {key:<{width}}  {value}" for key, value in rows))
    return EXIT_OK if ready else EXIT_FAILED


HANDLERS: dict[str, Callable[[TranscriptionClient, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "status": cmd_status,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "jobs": cmd_jobs,
    "queue": cmd_queue,
    "models": cmd_models,
    "health": cmd_health,
}


# -- formatting -------------------------------------------------------------------------------


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return _yes(value)
    return str(value)


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def _duration(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _time(value: Any) -> str:
    """The service's ISO times (UTC) as local `YYYY-MM-DD HH:MM:SS`, which is what a person reads."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def _priority_text(body: dict[str, Any]) -> str:
    priority = body.get("priority")
    if priority is None:
        return "-"
    name = body.get("priority_name") or (priority_name(priority) if isinstance(priority, int) else None)
    return f"{priority} ({name})" if name else str(priority)


if __name__ == "__main__":
    sys.exit(main())
