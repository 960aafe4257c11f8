"""The MCP server over stdio (`transcription-mcp`, or `python -m mcp_tools`): transcribe_wav,
check_transcription_status, cancel_transcription and list_transcriptions.

The tools' logic lives in `mcp_tools.tools` as plain functions; this module only describes them
to MCP clients, runs them off the event loop (they block on HTTP), forwards a waiting check's
progress as MCP progress notifications, and turns their result dicts into tool results
(`is_error` set when `success` is false), so an agent always gets a JSON answer with an
actionable message, never a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from mcp_tools import __version__, tools

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Speech-to-text for audio files through a Whisper transcription service.
Workflow: call transcribe_wav(filename) once per new recording; it returns a job_id at once.
Then call check_transcription_status(job_id) every 10-30 s (or with wait_seconds=30) until its
status is "completed"; the transcript is then saved as <output_dir>/<job_id>.txt and returned.
Use priority="urgent" for a recording someone is waiting on, diarize=true to label speakers,
cancel_transcription(job_id) for a job no longer wanted, and list_transcriptions() to find jobs
or see how busy the service is.
A result with success=false has an `error` that says what went wrong and what to do."""

FilenameArg = Annotated[
    str, Field(description="Path of the audio file (WAV or any audio FFmpeg decodes), as seen by this tool.")
]
OutputDirArg = Annotated[
    str,
    Field(description="Folder for <job_id>.transcribing.txt and the transcript; created when missing."),
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
PriorityArg = Annotated[
    str | int | None,
    Field(
        description="'urgent' (runs before every queued normal job), 'high', 'normal' (default), 'low', "
        "or a whole number from -100 to 100; higher runs first."
    ),
]
LanguageArg = Annotated[
    str | None,
    Field(description="The spoken language ('en', 'de', or 'german'); omit to detect it."),
]
TaskArg = Annotated[
    str | None,
    Field(description="'transcribe' (default: text in the spoken language) or 'translate' (English text)."),
]
DiarizeArg = Annotated[
    bool, Field(description="Label who spoke when: lines become 'SPEAKER_1: ...', 'SPEAKER_2: ...'.")
]
SpeakersArg = Annotated[
    int | None, Field(description="With diarize: the number of speakers, when you know it.")
]
MinSpeakersArg = Annotated[int | None, Field(description="With diarize: at least this many speakers.")]
MaxSpeakersArg = Annotated[int | None, Field(description="With diarize: at most this many speakers.")]
WordsArg = Annotated[bool, Field(description="Word-level times (in the json format's segments).")]
CallbackArg = Annotated[
    str | None,
    Field(description="An http(s) URL that gets a signed POST when the job ends; omit to poll instead."),
]
FormatArg = Annotated[
    str,
    Field(description="Format of the saved transcript file: 'txt' (default), 'srt', 'vtt' or 'json'."),
]
CheckFormatArg = Annotated[
    str | None,
    Field(description="'txt', 'srt', 'vtt' or 'json'; omit to save the format transcribe_wav was given."),
]
JobIdArg = Annotated[str, Field(description="The job_id that transcribe_wav returned.")]
PartialArg = Annotated[
    bool,
    Field(
        description="true: while the job is unfinished, also return `transcript_so_far`, the text of "
        "the part of a long recording transcribed so far (and `transcribed_s`, how far it reaches)."
    ),
]
WaitArg = Annotated[
    float,
    Field(
        description="Seconds (0-60; more counts as 60) to hold the call open while the job is unfinished; "
        "it returns as soon as the job completes or fails, and reports progress meanwhile. Stay below "
        "your tool-call timeout (30 is safe)."
    ),
]
StatusFilterArg = Annotated[
    str | None,
    Field(
        description="Only jobs in these states, comma-separated: queued, processing, completed, failed, "
        "cancelled; omit for all."
    ),
]
LimitArg = Annotated[int, Field(description="At most this many jobs (1-100), newest first.")]


def _run(call: Callable[[], dict[str, Any]], tool: str) -> dict[str, Any]:
    """Run a tool function; any exception it lets through still becomes a readable error result."""
    try:
        return call()
    except Exception as exc:
        log.exception("%s failed unexpectedly", tool)
        return {"success": False, "error": f"{tool} failed unexpectedly: {type(exc).__name__}: {exc}"}


def _tool_result(result: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(result, indent=2, ensure_ascii=False))],
        structured_content=result,
        is_error=not result.get("success", False),
    )


async def _in_thread(call: Callable[[], dict[str, Any]], tool: str) -> CallToolResult:
    """The tools block on HTTP: run them in a worker thread, so the session keeps answering."""
    return _tool_result(await anyio.to_thread.run_sync(lambda: _run(call, tool)))


def _progress_sender(ctx: Context | None) -> tools.ProgressReport | None:
    """A callback for the worker thread that sends MCP progress notifications on the event loop.
    A no-op in the SDK when the caller asked for none; a failed send never fails the check."""
    if ctx is None:
        return None

    def send(fraction: float, message: str) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, fraction, 1.0, message)
        except Exception:
            log.debug("progress notification not sent", exc_info=True)

    return send


def _description(fn: Callable[..., Any]) -> str:
    return inspect.cleandoc(fn.__doc__ or "")


def build_server() -> MCPServer:
    """A fresh server with every tool registered."""
    server: MCPServer = MCPServer("transcription", instructions=INSTRUCTIONS, version=__version__)

    @server.tool(
        name="transcribe_wav",
        description=_description(tools.transcribe_wav),
        annotations=ToolAnnotations(title="Queue an audio file for transcription", idempotent_hint=True),
    )
    async def transcribe_wav(
        filename: FilenameArg,
        output_dir: OutputDirArg = tools.DEFAULT_OUTPUT_DIR,
        model: ModelArg = None,
        transcription_service_url: UrlArg = None,
        priority: PriorityArg = None,
        language: LanguageArg = None,
        task: TaskArg = None,
        diarize: DiarizeArg = False,
        num_speakers: SpeakersArg = None,
        min_speakers: MinSpeakersArg = None,
        max_speakers: MaxSpeakersArg = None,
        word_timestamps: WordsArg = False,
        callback_url: CallbackArg = None,
        format: FormatArg = "txt",
    ) -> CallToolResult:
        return await _in_thread(
            lambda: tools.transcribe_wav(
                filename,
                output_dir,
                model,
                transcription_service_url,
                priority=priority,
                language=language,
                task=task,
                diarize=diarize,
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                word_timestamps=word_timestamps,
                callback_url=callback_url,
                format=format,
            ),
            "transcribe_wav",
        )

    @server.tool(
        name="check_transcription_status",
        description=_description(tools.check_transcription_status),
        annotations=ToolAnnotations(
            title="Check a transcription job and save its transcript", idempotent_hint=True
        ),
    )
    async def check_transcription_status(
        job_id: JobIdArg,
        output_dir: OutputDirArg = tools.DEFAULT_OUTPUT_DIR,
        transcription_service_url: UrlArg = None,
        wait_seconds: WaitArg = 0,
        format: CheckFormatArg = None,
        partial: PartialArg = False,
        ctx: Context | None = None,
    ) -> CallToolResult:
        report = _progress_sender(ctx)
        return await _in_thread(
            lambda: tools.check_transcription_status(
                job_id, output_dir, transcription_service_url, wait_seconds, format, report, partial
            ),
            "check_transcription_status",
        )

    @server.tool(
        name="cancel_transcription",
        description=_description(tools.cancel_transcription),
        annotations=ToolAnnotations(
            title="Cancel a transcription job", destructive_hint=True, idempotent_hint=False
        ),
    )
    async def cancel_transcription(
        job_id: JobIdArg,
        output_dir: OutputDirArg = tools.DEFAULT_OUTPUT_DIR,
        transcription_service_url: UrlArg = None,
    ) -> CallToolResult:
        return await _in_thread(
            lambda: tools.cancel_transcription(job_id, output_dir, transcription_service_url),
            "cancel_transcription",
        )

    @server.tool(
        name="list_transcriptions",
        description=_description(tools.list_transcriptions),
        annotations=ToolAnnotations(title="List transcription jobs and the queue", read_only_hint=True),
    )
    async def list_transcriptions(
        status: StatusFilterArg = None,
        limit: LimitArg = 20,
        transcription_service_url: UrlArg = None,
    ) -> CallToolResult:
        return await _in_thread(
            lambda: tools.list_transcriptions(status, limit, transcription_service_url),
            "list_transcriptions",
        )

    return server


def main() -> None:
    """Serve over stdio until the client closes the pipe. Logs go to stderr; stdout is the protocol."""
    build_server().run("stdio")
