"""Transcript renderings. Pure functions from a stored result to text.

whisper.utils writes undiarized transcripts, exactly as before. When segments carry a `speaker`
(diarization, or one speaker per channel), the speaker goes into every line or cue: `txt` has
`SPEAKER_1: ...` lines, `srt` cues start `[SPEAKER_1]`, `vtt` cues carry a `<v SPEAKER_1>` voice
tag, `tsv` gains a `speaker` column, and `rttm` (NIST's diarization exchange format) has one
SPEAKER line per speaker turn. `verbose_json` is the shape of OpenAI's transcription API, so its
clients read it unchanged; it needs the job's task, which the stored result does not hold.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from typing import Any

from service.engines.whisper_tables import (
    ResultWriter,
    WriteSRT,
    WriteTSV,
    WriteTXT,
    WriteVTT,
    format_timestamp,
)
from service.errors import BadRequest

# format -> (content type, whisper writer class, or None for the formats rendered here)
FORMATS: dict[str, tuple[str, type[ResultWriter] | None]] = {
    "txt": ("text/plain; charset=utf-8", WriteTXT),
    "srt": ("application/x-subrip; charset=utf-8", WriteSRT),
    "vtt": ("text/vtt; charset=utf-8", WriteVTT),
    "tsv": ("text/tab-separated-values; charset=utf-8", WriteTSV),
    "json": ("application/json; charset=utf-8", None),
    "verbose_json": ("application/json; charset=utf-8", None),
    "rttm": ("text/plain; charset=utf-8", None),
}

# Segment fields verbose_json carries, in OpenAI's order; `speaker` only when diarized.
_VERBOSE_SEGMENT_FIELDS = (
    "id",
    "seek",
    "start",
    "end",
    "text",
    "tokens",
    "temperature",
    "avg_logprob",
    "compression_ratio",
    "no_speech_prob",
    "speaker",
)
# Mel frames per second: a segment's `seek` counts them.
_FRAMES_PER_SECOND = 100


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return fmt


def has_speakers(result: dict[str, Any]) -> bool:
    return any(segment.get("speaker") for segment in result.get("segments", []))


def render(
    result: dict[str, Any], fmt: str, file_id: str = "audio", task: str = "transcribe"
) -> tuple[str, str]:
    """Return (body, content type) for a stored result in the asked format.

    `file_id` names the recording in rttm lines (the job id); `task` (transcribe or translate)
    goes into verbose_json. Other formats ignore both.
    """
    content_type, writer_cls = FORMATS[check_format(fmt)]
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False, indent=2) + "\n", content_type
    if fmt == "verbose_json":
        return json.dumps(verbose_json(result, task), ensure_ascii=False, indent=2) + "\n", content_type
    if fmt == "rttm":
        return _rttm(result, file_id), content_type
    if has_speakers(result):
        return _SPEAKER_RENDERERS[fmt](result), content_type
    assert writer_cls is not None
    # Cues follow segments: whisper's writers would time them by words when words are present.
    plain = {**result, "segments": [_without_words(s) for s in result.get("segments", [])]}
    buffer = io.StringIO()
    # The writers only use output_dir when writing files; rendering to a buffer needs none.
    writer_cls(output_dir="").write_result(
        plain,
        file=buffer,
        options={"max_line_width": None, "max_line_count": None, "highlight_words": False},
    )
    return buffer.getvalue(), content_type


def verbose_json(result: dict[str, Any], task: str = "transcribe") -> dict[str, Any]:
    """OpenAI's `verbose_json`; the flat `words` list only when the job asked for word times.

    Every field of OpenAI's segment is there, so strict clients accept it: the engine's values,
    or for results that lack them (stored by older versions) stand-ins from the segment itself.
    No time passes the recording's end.
    """
    duration = result.get("duration")
    limit = float(duration) if duration is not None else float("inf")
    segments = []
    words: list[dict[str, Any]] = []
    has_words = False
    for segment in result.get("segments", []):
        full = {**_segment_defaults(segment), **{k: v for k, v in segment.items() if v is not None}}
        out = {key: full[key] for key in _VERBOSE_SEGMENT_FIELDS if full.get(key) is not None}
        out["start"] = min(float(out["start"]), limit)
        out["end"] = max(out["start"], min(float(out["end"]), limit))
        if segment.get("words") is not None:
            has_words = True
            out["words"] = [_clamped(word, limit) for word in segment["words"]]
            words.extend(out["words"])
        segments.append(out)
    body: dict[str, Any] = {
        "task": task,
        "language": result.get("language"),
        "duration": result.get("duration"),
        "text": result.get("text", ""),
        "segments": segments,
    }
    if has_words:
        body["words"] = words
    return body


def _segment_defaults(segment: dict[str, Any]) -> dict[str, Any]:
    """Stand-ins for the decoder's figures: the window from the start time, whisper's compression
    ratio of the segment's own text, and neutral numbers for the rest."""
    text = str(segment.get("text", "")).encode("utf-8")
    return {
        "seek": round(float(segment.get("start", 0.0)) * _FRAMES_PER_SECOND),
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": len(text) / len(zlib.compress(text)) if text else 0.0,
        "no_speech_prob": 0.0,
    }


def _clamped(word: dict[str, Any], limit: float) -> dict[str, Any]:
    start = min(float(word["start"]), limit)
    return {**word, "start": start, "end": max(start, min(float(word["end"]), limit))}


def _without_words(segment: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in segment.items() if key != "words"}


def _cues(result: dict[str, Any]) -> list[tuple[float, float, str | None, str]]:
    cues = []
    for segment in result.get("segments", []):
        text = str(segment["text"]).strip().replace("-->", "->")
        if text:
            cues.append((float(segment["start"]), float(segment["end"]), segment.get("speaker"), text))
    return cues


def _txt_with_speakers(result: dict[str, Any]) -> str:
    """One line per speaker turn: consecutive segments of one speaker share a line."""
    lines: list[tuple[str | None, list[str]]] = []
    for _, _, speaker, text in _cues(result):
        if lines and lines[-1][0] == speaker:
            lines[-1][1].append(text)
        else:
            lines.append((speaker, [text]))
    return "".join(
        f"{speaker}: {' '.join(texts)}\n" if speaker else f"{' '.join(texts)}\n" for speaker, texts in lines
    )


def _srt_with_speakers(result: dict[str, Any]) -> str:
    out = []
    for index, (start, end, speaker, text) in enumerate(_cues(result), start=1):
        label = f"[{speaker}] " if speaker else ""
        out.append(
            f"{index}\n{format_timestamp(start, True, ',')} --> {format_timestamp(end, True, ',')}\n"
            f"{label}{text}\n\n"
        )
    return "".join(out)


def _tsv_with_speakers(result: dict[str, Any]) -> str:
    """whisper's TSV (integer milliseconds) with a speaker column before the text."""
    rows = ["start\tend\tspeaker\ttext\n"]
    for start, end, speaker, text in _cues(result):
        clean = re.sub(r"[\t\r\n]+", " ", text)
        rows.append(f"{round(1000 * start)}\t{round(1000 * end)}\t{speaker or ''}\t{clean}\n")
    return "".join(rows)


_VOICE_UNSAFE = re.compile(r"[<>&\s]")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_with_speakers(result: dict[str, Any]) -> str:
    out = ["WEBVTT\n\n"]
    for start, end, speaker, text in _cues(result):
        # A voice tag's annotation ends at '>'; speaker labels never hold one, but be safe.
        voice = f"<v {_VOICE_UNSAFE.sub('_', speaker)}>" if speaker else ""
        out.append(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{voice}{_vtt_escape(text)}\n\n")
    return "".join(out)


def _rttm(result: dict[str, Any], file_id: str) -> str:
    """`SPEAKER <file> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>`, one line per turn.

    The diarizer's speaker turns when stored (they follow speech closely); else the segments.
    """
    if not has_speakers(result):
        raise BadRequest("The rttm format needs speaker labels: transcribe with diarize=true.")
    name = re.sub(r"\s+", "_", file_id) or "audio"
    lines = []
    for span in result.get("speaker_turns") or result.get("segments", []):
        speaker = span.get("speaker")
        start, end = float(span["start"]), float(span["end"])
        if not speaker or end <= start:
            continue
        speaker = re.sub(r"\s+", "_", str(speaker))
        lines.append(f"SPEAKER {name} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} <NA> <NA>\n")
    return "".join(lines)


_SPEAKER_RENDERERS = {
    "txt": _txt_with_speakers,
    "srt": _srt_with_speakers,
    "vtt": _vtt_with_speakers,
    "tsv": _tsv_with_speakers,
}
