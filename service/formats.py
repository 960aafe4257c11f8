"""Transcript renderings. Pure functions from a stored result to text; whisper.utils writes them."""

from __future__ import annotations

import io
import json
from typing import Any

from whisper.utils import ResultWriter, WriteSRT, WriteTXT, WriteVTT

from service.errors import BadRequest

# format -> (content type, writer class or None for JSON)
FORMATS: dict[str, tuple[str, type[ResultWriter] | None]] = {
    "txt": ("text/plain; charset=utf-8", WriteTXT),
    "srt": ("application/x-subrip; charset=utf-8", WriteSRT),
    "vtt": ("text/vtt; charset=utf-8", WriteVTT),
    "json": ("application/json; charset=utf-8", None),
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return fmt


def render(result: dict[str, Any], fmt: str) -> tuple[str, str]:
    """Return (body, content type) for a stored result in the asked format."""
    content_type, writer_cls = FORMATS[check_format(fmt)]
    if writer_cls is None:
        return json.dumps(result, ensure_ascii=False, indent=2) + "\n", content_type
    buffer = io.StringIO()
    # The writers only use output_dir when writing files; rendering to a buffer needs none.
    writer_cls(output_dir="").write_result(
        result,
        file=buffer,
        options={"max_line_width": None, "max_line_count": None, "highlight_words": False},
    )
    return buffer.getvalue(), content_type
