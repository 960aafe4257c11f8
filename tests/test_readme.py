"""The README's curl examples, run as written against a real server (only the host and file differ)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, ServerProcess, eval_clip, reference_text, word_error_rate

CLIP = "sense_and_sensibility_01_austen_64kb-0890.wav"


def readme_curl_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("curl "):
                commands.append(line)
    return commands


def test_readme_has_an_example_for_every_endpoint() -> None:
    joined = "\n".join(readme_curl_commands())
    for endpoint in (
        "/transcribe",
        "/status/",
        "?wait=",
        "/download/",
        "format=srt",
        "/health",
        "/models",
        "/jobs",
        "/queue",
        "/client/",
    ):
        assert endpoint in joined, endpoint


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_work_as_written(server_factory: Any, tmp_path: Path) -> None:
    server: ServerProcess = server_factory().start()
    shutil.copy(eval_clip(CLIP), tmp_path / "meeting.wav")
    outputs: list[tuple[str, str]] = []
    for command in readme_curl_commands():
        command = command.replace("http://127.0.0.1:8765", server.url)
        run = subprocess.run(
            ["bash", "-c", command + " -w '\\n%{http_code}'"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, (command, run.stderr)
        body, _, code = run.stdout.rpartition("\n")
        if "-X DELETE" in command and "/models/" in command:  # the default tiny.en stays loaded
            assert code == "409" and "default model" in body, (command, code, body)
        elif "-X DELETE" in command:  # the job it cancels has completed by then
            assert code == "409" and "nothing to cancel" in body, (command, code, body)
        else:
            assert code in ("200", "202"), (command, code, body)
        outputs.append((command, body))
    waited = next(json.loads(body) for command, body in outputs if "?wait=" in command)
    assert waited["status"] == "completed"
    text = next(body for command, body in outputs if "/download/" in command and "format" not in command)
    assert word_error_rate(reference_text(CLIP), text) <= 0.15
    srt = (tmp_path / "meeting.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> ")
