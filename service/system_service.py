"""`python -m service install-service` and `uninstall-service`: run the service as a system service.

Bare, nothing else starts the service at boot, restarts it after a crash, or notices that it
hangs. This writes the service manager's own description of it, for the interpreter running
this command (`sys.executable -m service serve` with the given serve flags):

- Linux: a systemd unit, system-wide (`/etc/systemd/system`) or, with `--user`, for the user's
  own manager (`~/.config/systemd/user`). `Type=notify`: the service says READY=1 once its model
  is loaded, and pings the watchdog (`WatchdogSec=`) only while it is healthy
  (service/inference/selfcheck.py), so systemd restarts a wedged service too. `Restart=on-failure`
  at most 3 times in 5 minutes, then it stays down and `systemctl status` says so. Exit status 2
  (bad flags, a storage directory another process owns, a port in use) is not retried: a
  restart cannot fix it. `TimeoutStopSec=` covers --shutdown-grace. System units are sandboxed
  (`NoNewPrivileges`, `ProtectSystem=strict` with the storage, model and log directories
  writable, `PrivateTmp`); user units only get `NoNewPrivileges`, since the rest needs user
  namespaces that many systems do not give unprivileged users.
- macOS (`--launchd`, the default there): a launchd property list, a LaunchDaemon or, with
  `--user`, a LaunchAgent: `RunAtLoad`, `KeepAlive` after a crash (launchd throttles restarts
  but has no start limit), the log in the storage directory.

Secrets (`--api-token`, `--webhook-secret`) never go on the command line in the unit, where
`ps` and `systemctl cat` show them: they are written to the unit's environment file (mode 600),
which the unit reads with `EnvironmentFile=-` (optional: other `SERVICE_*` settings can go there
too). launchd has no environment files: there they go into the property list, written mode 600.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import grp
import math
import os
import plistlib
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import service
from service.app import STOP_GRACE_SECONDS
from service.inference.worker import STOP_INTERRUPT_SECONDS
from service.server import REQUEST_DRAIN_SECONDS
from service.settings import OPTIONS, build_parser, parse_settings

COMMANDS = ("install-service", "uninstall-service")
PROG = "python -m service"
DEFAULT_NAME = "whisper-transcription"
# Restarted after a crash at most this many times in this many seconds, then left down.
START_LIMIT_BURST = 3
START_LIMIT_INTERVAL_SECONDS = 300
RESTART_SECONDS = 5
# A model downloads on its first start: large-v3 is 3 GB.
START_TIMEOUT_SECONDS = 900
# WatchdogSec: this many --self-check-seconds without a healthy round.
WATCHDOG_ROUNDS = 3
# Past the grace period: the interrupt, the inference process's end, some slack.
STOP_SLACK_SECONDS = 15
EXIT_OK, EXIT_USAGE = 0, 2
# Paths among the serve flags: written absolute, since the service manager starts elsewhere.
PATH_FIELDS = ("storage_dir", "model_dir", "log_file")


@dataclass(frozen=True)
class Target:
    """Which service manager, and whose."""

    launchd: bool
    user: bool
    name: str

    @property
    def label(self) -> str:
        """launchd wants a reverse-DNS label."""
        return self.name if "." in self.name else f"local.{self.name}"

    @property
    def file_name(self) -> str:
        return f"{self.label}.plist" if self.launchd else f"{self.name}.service"

    def default_dir(self) -> Path:
        home = Path.home()
        if self.launchd:
            return home / "Library/LaunchAgents" if self.user else Path("/Library/LaunchDaemons")
        config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        return config / "systemd/user" if self.user else Path("/etc/systemd/system")

    def default_storage(self) -> Path:
        home = Path.home()
        if self.launchd:
            base = home / "Library/Application Support" if self.user else Path("/Library/Application Support")
            return base / self.name
        data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local/share")
        return data / self.name if self.user else Path("/var/lib") / self.name

    def default_env_file(self) -> Path:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return config / f"{self.name}.env" if self.user else Path("/etc/default") / self.name

    def systemctl(self) -> str:
        return "systemctl --user" if self.user else "systemctl"


@dataclass(frozen=True)
class Plan:
    """Everything the unit or property list says, worked out once from the command line."""

    target: Target
    python: str
    serve_args: tuple[str, ...]
    storage: Path
    writable: tuple[Path, ...]
    env_file: Path
    secrets: dict[str, str]  # variable -> value, kept out of the command line
    pythonpath: str
    run_as: str | None
    group: str | None
    watchdog_seconds: int
    stop_timeout_seconds: int
    start_timeout_seconds: int
    port: int
    notes: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "service", *self.serve_args]


# -- the command line ---------------------------------------------------------------------------


def _parser(command: str) -> argparse.ArgumentParser:
    install = command == "install-service"
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {command}",
        allow_abbrev=False,  # every other flag is a serve flag, passed on as given
        description=(
            "Write a systemd unit (or a launchd property list) that runs this service from this "
            "Python environment, with the serve flags that follow, and print how to start it."
            if install
            else "Remove the unit (or property list) install-service wrote; storage and settings stay."
        ),
        epilog=(
            f"Any other flag is a serve flag (`{PROG} serve --help`), checked now and written into the unit."
            if install
            else None
        ),
    )
    parser.add_argument(
        "--user", action="store_true", help="the user's own service manager instead of the system's"
    )
    parser.add_argument(
        "--launchd",
        action=argparse.BooleanOptionalAction,
        default=sys.platform == "darwin",
        help="a launchd property list (macOS; the default there) instead of a systemd unit",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help="the unit's name (default %(default)s)")
    parser.add_argument(
        "--unit-dir", type=Path, help="where the unit goes (default: where the service manager looks)"
    )
    if not install:
        return parser
    parser.add_argument("--print", action="store_true", help="show the unit; write nothing")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="the unit's environment file, for secrets and SERVICE_* settings (default "
        "/etc/default/NAME, or ~/.config/NAME.env with --user)",
    )
    parser.add_argument(
        "--run-as",
        metavar="USER",
        help="the account a system unit runs as (default: the one that ran sudo, else this one)",
    )
    parser.add_argument(
        "--watchdog-seconds",
        type=int,
        help=f"restart when the service is unhealthy this long; 0 turns the watchdog off "
        f"(default {WATCHDOG_ROUNDS}x --self-check-seconds)",
    )
    parser.add_argument(
        "--start-timeout",
        type=int,
        default=START_TIMEOUT_SECONDS,
        help="seconds the first model load may take, download included (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """`install-service ...` or `uninstall-service ...`: the exit status."""
    command, rest = argv[0], list(argv[1:])
    parser = _parser(command)
    ns, serve_args = parser.parse_known_args(rest)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]*", ns.name):
        parser.error(f"--name must be letters, digits and . _ - @, not {ns.name!r}")
    target = Target(ns.launchd, ns.user, ns.name)
    if command == "uninstall-service":
        if serve_args:
            parser.error(f"unrecognized arguments: {' '.join(serve_args)}")
        return uninstall(target, ns.unit_dir)
    try:
        plan = make_plan(target, ns, serve_args)
    except ValueError as exc:
        parser.error(str(exc))
    if ns.print:
        hidden = {key: "(written at install, not shown)" for key in plan.secrets}
        sys.stdout.write(render(dataclasses.replace(plan, secrets=hidden)).decode())
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        if plan.secrets:
            where = "the property list" if target.launchd else f"{plan.env_file} (mode 600)"
            secrets = ", ".join(plan.secrets)
            print(f"note: {secrets} would be written to {where}, not shown here", file=sys.stderr)
        return EXIT_OK
    return install(plan, ns.unit_dir or target.default_dir())


def make_plan(target: Target, ns: argparse.Namespace, serve_args: list[str]) -> Plan:
    """Check the serve flags as the server would, and work out the unit's contents."""
    given = vars(build_parser({}).parse_args(serve_args))  # exits 2 on an unknown flag, as serve does
    settings = parse_settings(serve_args, env={})  # exits 2 on a bad value, as serve does
    notes: list[str] = []
    for field_name in PATH_FIELDS:
        if given.get(field_name):
            given[field_name] = str(Path(given[field_name]).expanduser().absolute())
    storage = Path(given.get("storage_dir") or target.default_storage())
    given["storage_dir"] = str(storage)
    secrets: dict[str, str] = {}
    for option in OPTIONS:
        if option.flag_spec.secret and given.get(option.field):
            secrets[option.env] = given.pop(option.field)
            notes.append(
                f"{option.flag} is not written into the unit's command line, where ps and the unit "
                f"file would show it: it goes into the environment as {option.env}"
            )
    args = ["serve"]
    for option in OPTIONS:  # in the declared order, so the unit reads the same each time
        if option.field not in given:
            continue
        value = given[option.field]
        if option.is_switch:
            args.append(option.flag if value else "--no-" + option.flag[2:])
        else:
            args += [option.flag, str(value)]
    writable = [storage]
    extra = [Path(given[name]) for name in ("model_dir",) if settings.model_dir is not None]
    if settings.log_file is not None:
        extra.append(Path(given["log_file"]).parent)
    for path in extra:  # inside the storage, or listed already: writable anyway
        if path not in writable and storage not in path.parents:
            writable.append(path)
    run_as, group = _account(target, ns.run_as, notes)
    if not target.user and not target.launchd and _under_tmp(writable):
        notes.append("the storage is under /tmp: the unit cannot give the service a private /tmp")
    watchdog = ns.watchdog_seconds
    if watchdog is None:
        watchdog = max(10, math.ceil(WATCHDOG_ROUNDS * settings.self_check_seconds))
    if watchdog < 0 or ns.start_timeout < 1:
        raise ValueError("--watchdog-seconds must be 0 or more and --start-timeout at least 1")
    stop = max(settings.shutdown_grace + STOP_INTERRUPT_SECONDS, STOP_GRACE_SECONDS) + REQUEST_DRAIN_SECONDS
    return Plan(
        target=target,
        python=sys.executable,  # not resolved: a virtual environment's python is a symlink
        serve_args=tuple(args),
        storage=storage,
        writable=tuple(writable),
        env_file=(ns.env_file or target.default_env_file()).expanduser().absolute(),
        secrets=secrets,
        pythonpath=str(Path(service.__file__).resolve().parent.parent),
        run_as=run_as,
        group=group,
        watchdog_seconds=watchdog,
        stop_timeout_seconds=math.ceil(stop + STOP_SLACK_SECONDS),
        start_timeout_seconds=ns.start_timeout,
        port=settings.port,
        notes=notes,
    )


def _account(target: Target, run_as: str | None, notes: list[str]) -> tuple[str | None, str | None]:
    """The account a system unit runs as: never root unless nobody else is known."""
    if target.user:
        if run_as:
            raise ValueError("--run-as is for system units; a --user unit runs as its user")
        return None, None
    name = run_as or os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--run-as: no such user {name!r}") from None
    if entry.pw_uid == 0:
        notes.append("the service would run as root: pass --run-as USER to run it as an unprivileged user")
        return None, None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return entry.pw_name, group


# -- the files ------------------------------------------------------------------------------


def _word(text: str) -> str:
    """One word of a systemd command line or list: % and $ escaped, quoted when it must be."""
    escaped = text.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path(path: Path) -> str:
    """A path where systemd takes the rest of the line as it is (specifiers still apply)."""
    return str(path).replace("%", "%%")


def _under_tmp(paths: Sequence[Path]) -> bool:
    temporary = (Path("/tmp"), Path("/var/tmp"))
    return any(path in temporary or any(t in path.parents for t in temporary) for path in paths)


def systemd_unit(plan: Plan) -> str:
    target = plan.target
    command = " ".join(_word(word) for word in plan.command)
    lines = [
        f"# Written by `{PROG} install-service`: run it again (or edit {plan.env_file}) rather than",
        "# editing this file by hand.",
        "[Unit]",
        f"Description=Whisper transcription service (port {plan.port}, storage {_path(plan.storage)})",
    ]
    if not target.user:  # a user manager cannot order itself after the system's network
        lines += ["After=network-online.target", "Wants=network-online.target"]
    lines += [
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SECONDS}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        f"WorkingDirectory={_path(plan.storage)}",
    ]
    if plan.run_as:
        lines += [f"User={plan.run_as}", f"Group={plan.group}"]
    lines += [
        f"EnvironmentFile=-{_path(plan.env_file)}",
        # This code, whether or not the package is installed into the environment.
        f"Environment={_word('PYTHONPATH=' + plan.pythonpath)}",
        "Environment=PYTHONUNBUFFERED=1",
        # Caches (torch, Hugging Face) inside the storage: the rest of the disk may be read-only.
        f"Environment={_word('XDG_CACHE_HOME=' + str(plan.storage / '.cache'))}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        "RestartPreventExitStatus=2",
        f"TimeoutStartSec={plan.start_timeout_seconds}",
        f"TimeoutStopSec={plan.stop_timeout_seconds}",
    ]
    if plan.watchdog_seconds:
        lines.append(f"WatchdogSec={plan.watchdog_seconds}")
    lines += [
        # SIGTERM to the server alone: it decides when the inference process ends.
        "KillMode=mixed",
        "NoNewPrivileges=yes",
    ]
    if not target.user:
        lines += [
            "ProtectSystem=strict",
            f"ReadWritePaths={' '.join(_word(str(path)) for path in plan.writable)}",
        ]
        if not _under_tmp(plan.writable):  # a private /tmp would hide a storage kept there
            lines.append("PrivateTmp=yes")
    lines += ["", "[Install]", f"WantedBy={'default.target' if target.user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def launchd_plist(plan: Plan) -> bytes:
    environment = {"PYTHONPATH": plan.pythonpath, "PYTHONUNBUFFERED": "1", **plan.secrets}
    log_path = str(plan.storage / "service.log")
    description: dict[str, object] = {
        "Label": plan.target.label,
        "ProgramArguments": plan.command,
        "WorkingDirectory": str(plan.storage),
        "EnvironmentVariables": environment,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # started again after a crash, not after a stop
        "ThrottleInterval": RESTART_SECONDS * 2,
        "ExitTimeOut": plan.stop_timeout_seconds,
        "ProcessType": "Standard",  # "Background" would throttle the decoding's CPU and I/O
        "StandardOutPath": log_path,
        "StandardErrorPath": log_path,
    }
    if plan.run_as:
        description["UserName"] = plan.run_as
    return plistlib.dumps(description)


def render(plan: Plan) -> bytes:
    return launchd_plist(plan) if plan.target.launchd else systemd_unit(plan).encode()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Whole or not at all, with its mode set before anyone can read it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fp:
            os.fchmod(fp.fileno(), mode)
            fp.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _env_value(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._~+/=:,@-]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def update_env_file(path: Path, variables: dict[str, str], name: str) -> None:
    """Set `variables` in a KEY=value file, keeping its other lines; mode 600."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = [line for line in lines if line.split("=", 1)[0].strip() not in variables]
    header = [] if lines else [f"# SERVICE_* settings and secrets of the {name} service (EnvironmentFile)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    body = header + kept + [f"{key}={_env_value(value)}" for key, value in variables.items()]
    _write(path, ("\n".join(body) + "\n").encode(), 0o600)


def _prepare_directories(plan: Plan) -> None:
    """Create the storage (and model, log) directories the unit makes writable, owned by the
    account it runs as: under ProtectSystem=strict the service could not create them itself."""
    owner = pwd.getpwnam(plan.run_as) if plan.run_as and os.geteuid() == 0 else None
    for path in plan.writable:
        if path.is_dir():
            continue
        path.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def install(plan: Plan, unit_dir: Path) -> int:
    target = plan.target
    path = unit_dir / target.file_name
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        _prepare_directories(plan)
        if plan.secrets and not target.launchd:
            update_env_file(plan.env_file, plan.secrets, target.name)
        _write(path, render(plan), 0o600 if plan.secrets and target.launchd else 0o644)
    except PermissionError as exc:
        where = exc.filename or path
        print(
            f"error: cannot write {where}: permission denied. Run it as root (sudo {plan.python} -m "
            "service install-service ...), or install a user unit with --user.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(f"wrote {path}")
    for note in plan.notes:
        print(f"note: {note}")
    if plan.secrets:
        where = f"{path} (mode 600; launchd has no environment files)" if target.launchd else plan.env_file
        print(f"note: {', '.join(plan.secrets)} written to {where}")
    if target.launchd:
        domain = "gui/$(id -u)" if target.user else "system"
        sudo = "" if target.user else "sudo "
        print("Start it now and at every login/boot:" if target.user else "Start it now and at every boot:")
        print(f"  {sudo}launchctl bootstrap {domain} {path}")
        print(f"Stop it: {sudo}launchctl bootout {domain} {path}")
        print(f"Its log: {plan.storage / 'service.log'}")
        return EXIT_OK
    systemctl, unit = target.systemctl(), target.file_name
    print("Start it now and at every boot:")
    print(f"  {systemctl} daemon-reload")
    print(f"  {systemctl} enable --now {unit}")
    print(f"Its state (health, the running job, the queue): {systemctl} status {unit}")
    print(f"Its log: journalctl {'--user ' if target.user else ''}-u {unit} -f")
    print(f"Settings and secrets (SERVICE_* lines, optional): {plan.env_file}")
    if target.user:
        print(f"To start it at boot without logging in: loginctl enable-linger {getpass.getuser()}")
    return EXIT_OK


# -- removing it ------------------------------------------------------------------------------


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _run(command: list[str]) -> None:
    """Best effort: say what ran and how it went, never fail the removal over it."""
    print(f"$ {' '.join(command)}")
    with contextlib.suppress(OSError):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        for line in (result.stdout + result.stderr).splitlines():
            print(f"  {line}")


def uninstall(target: Target, unit_dir: Path | None) -> int:
    directory = unit_dir or target.default_dir()
    path = directory / target.file_name
    if not path.is_file():
        print(f"no unit at {path}: nothing to remove")
        return EXIT_OK
    text = path.read_text(errors="replace")
    managed = unit_dir is None  # a unit written elsewhere is not the service manager's business
    if managed and target.launchd and shutil.which("launchctl"):
        _run(["launchctl", "bootout", f"gui/{os.getuid()}" if target.user else "system", str(path)])
    elif managed and not target.launchd and _systemd_running():
        _run([*target.systemctl().split(), "disable", "--now", target.file_name])
    try:
        path.unlink()
        for link in directory.glob(f"*.wants/{target.file_name}"):  # enabled without systemctl
            link.unlink()
    except PermissionError:
        print(f"error: cannot remove {path}: permission denied; run it as root", file=sys.stderr)
        return EXIT_USAGE
    if managed and not target.launchd and _systemd_running():
        _run([*target.systemctl().split(), "daemon-reload"])
    print(f"removed {path}")
    kept = re.search(r"^WorkingDirectory=(.+)$", text, re.M) or re.search(
        r"<key>WorkingDirectory</key>\s*<string>([^<]+)</string>", text
    )
    if kept:
        print(f"kept the storage ({kept[1].replace('%%', '%')}) and any environment file")
    return EXIT_OK


__all__ = ["COMMANDS", "Plan", "Target", "main", "make_plan", "render"]
