"""The MCP server: `transcribe_wav` and `check_transcription_status` over stdio (`python -m mcp_tools`).

The tools' logic lives in `mcp_tools.tools` as plain functions; this module only describes them
to MCP clients and turns their result dicts into tool results (`is_error` set when `success` is
false), so an agent always gets a JSON answer with an actionable message, never a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from mcp_tools import tools

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Speech-to-text for audio files through a Whisper transcription service.
Workflow: call transcribe_wav(filename) once per new recording; it returns a job_id at once.
Then call check_transcription_status(job_id) every 10-30 s (or with wait_seconds=30) until its
status is "completed"; the transcript is then saved as <output_dir>/<job_id>.txt and returned.
A result with success=false has an `error` that says what went wrong and what to do."""

FilenameArg = Annotated[
    str, Field(description="Path of the audio file (WAV or any audio FFmpeg decodes), as seen by this tool.")
]
OutputDirArg = Annotated[
    str,
    Field(description="Folder for <job_id>.transcribing.txt and <job_id>.txt; created when missing."),
]
ModelArg = Annotated[
    str | None,
    Field(description="Whisper model name (e.g. 'small', 'large-v3'); omit for the service's default."),
]
UrlArg = Annotated[
    str | None,
    Field(
        description=(
            "Transcription service URL; omit to use $TRANSCRIPTION_SERVICE_URL or "
            f"{tools.DEFAULT_SERVICE_URL}."
        )
    ),
]
JobIdArg = Annotated[str, Field(description="The job_id that transcribe_wav returned.")]
WaitArg = Annotated[
    float,
    Field(
        description="Seconds (0-60; more counts as 60) to hold the call open while the job is unfinished; "
        "it returns as soon as the job completes or fails. Stay below your tool-call timeout (30 is safe)."
    ),
]


def _as_tool_result(call: Callable[[], dict[str, Any]], tool: str) -> CallToolResult:
    """Run a tool function; any exception it lets through still becomes a readable error result."""
    try:
        result = call()
    except Exception as exc:
        log.exception("%s failed unexpectedly", tool)
        result = {"success": False, "error": f"{tool} failed unexpectedly: {type(exc).__name__}: {exc}"}
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(result, indent=2, ensure_ascii=False))],
        structured_content=result,
        is_error=not result.get("success", False),
    )


def _description(fn: Callable[..., Any]) -> str:
    return inspect.cleandoc(fn.__doc__ or "")


def build_server() -> MCPServer:
    """A fresh server with both tools registered."""
    server: MCPServer = MCPServer("transcription", instructions=INSTRUCTIONS, version="0.1.0")

    @server.tool(
        name="transcribe_wav",
        description=_description(tools.transcribe_wav),
        annotations=ToolAnnotations(title="Queue an audio file for transcription", idempotent_hint=True),
    )
    def transcribe_wav(
        filename: FilenameArg,
        output_dir: OutputDirArg = tools.DEFAULT_OUTPUT_DIR,
        model: ModelArg = None,
        transcription_service_url: UrlArg = None,
    ) -> CallToolResult:
        return _as_tool_result(
            lambda: tools.transcribe_wav(filename, output_dir, model, transcription_service_url),
            "transcribe_wav",
        )

    @server.tool(
        name="check_transcription_status",
        description=_description(tools.check_transcription_status),
        annotations=ToolAnnotations(
            title="Check a transcription job and save its transcript", idempotent_hint=True
        ),
    )
    def check_transcription_status(
        job_id: JobIdArg,
        output_dir: OutputDirArg = tools.DEFAULT_OUTPUT_DIR,
        transcription_service_url: UrlArg = None,
        wait_seconds: WaitArg = 0,
    ) -> CallToolResult:
        return _as_tool_result(
            lambda: tools.check_transcription_status(
                job_id, output_dir, transcription_service_url, wait_seconds
            ),
            "check_transcription_status",
        )

    return server


def main() -> None:
    """Serve over stdio until the client closes the pipe. Logs go to stderr; stdout is the protocol."""
    build_server().run("stdio")
