"""A 1 GiB upload streams through a real server process without being held in memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import ServerProcess

UPLOAD_BYTES = 1024**3
BOUNDARY = "large-upload-boundary"
# The server may buffer a few chunks; anything near the upload's size means it held the body.
MAX_RSS_GROWTH_BYTES = 128 * 1024**2


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def multipart_body(payload_bytes: int) -> Iterator[bytes]:
    """A multipart body generated on the fly: bytes that are not audio, so nothing decodes it."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    sent = 0
    while sent < payload_bytes:
        piece = chunk[: payload_bytes - sent]
        sent += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.slow
def test_gigabyte_upload_streams_to_disk(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory().start()
    assert server.proc is not None
    pid = server.proc.pid
    idle = rss_bytes(pid)
    peak = idle
    done = threading.Event()
    seen_in_tmp = []

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            seen_in_tmp.extend(p.stat().st_size for p in (server.storage_dir / "tmp").iterdir())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        resp = requests.post(
            server.url + "/transcribe",
            data=multipart_body(UPLOAD_BYTES),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            timeout=300,
        )
    finally:
        done.set()
        sampler.join()
    # The whole gigabyte reached the server (it was on disk) before it was judged not audio.
    assert resp.status_code == 415, resp.text
    assert "not audio" in resp.json()["error"]
    assert max(seen_in_tmp, default=0) > UPLOAD_BYTES // 2
    assert peak - idle < MAX_RSS_GROWTH_BYTES, f"RSS grew by {(peak - idle) / 1024**2:.0f} MiB"
    # Rejected: nothing left behind, and the service is still healthy.
    assert list((server.storage_dir / "tmp").iterdir()) == []
    assert list((server.storage_dir / "pending").iterdir()) == []
    assert requests.get(server.url + "/health", timeout=5).json()["queue_size"] == 0
