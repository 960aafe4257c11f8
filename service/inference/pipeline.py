"""One job's inference, as it runs inside whichever runner holds the models: decode the audio,
transcribe it (each channel, when split), put speakers on the result when asked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.diarization.assign import merge_channel_results
from service.diarization.pipeline import DiarizationOptions, Diarizer
from service.engines.base import DecodeOptions, JobInterrupted, Result, Segment
from service.inference import audio
from service.inference.models import ModelManager
from service.jobs.job import JobOptions


@dataclass(frozen=True)
class TranscribeRequest:
    job_id: str
    audio_path: str
    model: str
    options: DecodeOptions
    job_options: JobOptions = field(default_factory=JobOptions)


_diarizer: Diarizer | None = None
_diarizer_lock = threading.Lock()


def _warm_diarizer() -> Diarizer:
    """One speaker encoder per process, loaded on the first diarized job and kept."""
    global _diarizer
    with _diarizer_lock:
        if _diarizer is None:
            diarizer = Diarizer()
            diarizer.load()
            _diarizer = diarizer
        return _diarizer


def execute(
    manager: ModelManager,
    request: TranscribeRequest,
    should_stop: Callable[[], bool],
    report: Callable[[float], None],
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> Result:
    """One job's inference: decode the audio once, transcribe (each channel, when split), and
    put speakers on the result when asked, with the model pinned throughout.

    `emit` hears each segment as it is decoded: before diarization (no speakers yet), and when
    split by channel with `channel` and `speaker` set and ids counted across channels, so they
    stay distinct (the final result renumbers them in time order).
    """
    extras = request.job_options
    span = [0, 1]  # channels done, channels in all: progress runs 0..1 over every channel
    emitted = [0]

    def on_segment(segment: Segment) -> None:
        if emit is None:
            return
        live = segment.as_dict()
        if extras.split_channels:
            channel = span[0] + 1
            live.update(id=emitted[0], channel=channel, speaker=f"CHANNEL_{channel}")
        emitted[0] += 1
        emit(live)

    def on_progress(fraction: float) -> None:
        overall = (span[0] + fraction) / span[1]
        if extras.diarize:
            overall *= 0.95  # the speaker pass comes after the last window
        if overall < 1.0 and should_stop():  # the last window done: keep the result
            raise JobInterrupted
        report(overall)

    options = request.options
    if extras.word_timestamps or extras.diarize:
        options = replace(options, word_timestamps=True)
    with manager.using(request.model) as model:
        path = Path(request.audio_path)
        if extras.split_channels:
            channels = audio.decode_channels(path)
            span[1] = len(channels)
            results = []
            for index, pcm in enumerate(channels):
                span[0] = index
                results.append(
                    manager.engine.transcribe(model, pcm, options, on_progress, on_segment, should_stop)
                )
            return merge_channel_results(results)
        pcm = audio.decode(path)
        if should_stop():
            raise JobInterrupted
        result = manager.engine.transcribe(model, pcm, options, on_progress, on_segment, should_stop)
    if not extras.diarize:
        return result
    speakers = DiarizationOptions(extras.num_speakers, extras.min_speakers, extras.max_speakers)
    result = _warm_diarizer()(pcm, result, speakers)
    report(1.0)
    return result
