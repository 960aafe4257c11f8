"""`python -m service <command>`: run the server, or use it from a terminal.

`serve` (or flags alone, as scripts, Docker and tests have always called it) starts the server.
Every other subcommand is the light client's command line (`mcp_tools.cli`, the
`whisper-transcription-client` distribution, also installed alone as `transcription-client`),
run under this program's name: the server reuses the client, never the other way round.

Exit codes: 0 ok; 1 the service answered but the work did not succeed (a job failed or was
cancelled, an upload or a cancel was refused, no such job); 2 the command could not run as
given (bad arguments, a missing local file, nothing answering at the URL, a wrong token).
Errors are one line on stderr; results go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mcp_tools import cli as client_cli
from mcp_tools.cli import EXIT_CODES, URL_ENV, Progress

__all__ = ["PROG", "SUBCOMMANDS", "URL_ENV", "Progress", "build_parser", "main"]

PROG = "python -m service"
SUBCOMMANDS = ("serve", *client_cli.SUBCOMMANDS)
# Write or remove a systemd unit or launchd property list that runs `serve` (service/system_service.py).
SYSTEM_SERVICE_COMMANDS = ("install-service", "uninstall-service")


def build_parser() -> argparse.ArgumentParser:
    """The client subcommands and `serve`, which is listed here but parsed by `parse_settings`."""
    return client_cli.build_parser(
        PROG,
        description="Persistent Whisper transcription service: run it, or queue audio and fetch "
        "transcripts from a terminal.",
        epilog=f"With no subcommand, or only flags, `{PROG} [flags]` serves (same as `serve`). "
        f"`{PROG} install-service [--user] [serve flags]` runs it as a system service (systemd, "
        f"launchd); `uninstall-service` removes that.\n\n{EXIT_CODES}",
        serve=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m service` and the `transcription-service` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        return _serve(args)  # `python -m service --port N ...`, as before subcommands existed
    if args[0] == "serve":
        return _serve(args[1:])
    if args[0] in SYSTEM_SERVICE_COMMANDS:
        from service import system_service  # the server's settings, only for these two

        return system_service.main(args)
    return client_cli.main(args, prog=PROG, parser=build_parser())


def _serve(argv: list[str]) -> int:
    from service.server import run  # the server's imports (aiohttp, the engines) only when serving

    return run(argv)
