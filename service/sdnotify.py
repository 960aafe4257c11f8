"""The systemd notify protocol (sd_notify), spoken directly: no dependency for a few lines.

Under `Type=notify`, systemd passes `NOTIFY_SOCKET` (a filesystem path, or an abstract socket
name written with a leading '@'); each message is one datagram of `KEY=VALUE` lines:
`READY=1` once start-up is complete, `STATUS=...` for `systemctl status`, `STOPPING=1`,
`WATCHDOG=1` (with `WatchdogSec=`, systemd passes `WATCHDOG_USEC` and restarts the service when
the pings stop) and `EXTEND_TIMEOUT_USEC=...` to ask for more time while stopping.

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, so the service calls it freely.
Sending never blocks: a datagram that does not fit the receiver's queue is dropped, as a late
ping would be no use anyway.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes:
    """'@name' is Linux's abstract namespace: a leading NUL byte instead of a path."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Messages to the service manager that started this process, if it asked for them."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = _address(raw) if raw and raw != "@" else None
        self.watchdog_seconds = self._watchdog(env, os.getpid() if pid is None else pid)
        self._sock: socket.socket | None = None
        self._warned = False

    @staticmethod
    def _watchdog(env: Mapping[str, str], pid: int) -> float | None:
        """The watchdog timeout, when one is set for this very process (`WATCHDOG_PID`)."""
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            owner = int(env.get("WATCHDOG_PID") or pid)
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 and owner == pid else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_seconds / 2 if self.watchdog_seconds else None

    def send(self, *lines: str) -> bool:
        """One datagram of `KEY=VALUE` lines; False when there is nobody to tell or it failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:  # the manager is gone, or its queue is full: not worth failing over
            if not self._warned:
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more from now before the manager gives up on the stop (or start)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
