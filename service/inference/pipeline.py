"""One job's inference, as it runs inside whichever runner holds the models.

A recording is read as a stream and cut into speech chunks at pauses (`chunking`); each chunk
is decoded on its own and handed to `checkpoint` before the next one starts, which makes it
durable and says whether to go on. A job that was interrupted (crash, restart, shutdown, a
higher-priority job) passes its checkpoints back in and resumes after the last of them.
Memory stays at about a chunk of audio plus the transcript, however long the recording.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.diarization.assign import merge_channel_results
from service.diarization.pipeline import DiarizationOptions, Diarizer
from service.engines.base import DecodeOptions, JobInterrupted, Result, Segment
from service.inference import audio
from service.inference.chunking import ChunkingOptions, speech_chunks
from service.inference.models import ModelManager
from service.jobs.job import JobOptions, checkpoints_reach

# What the checkpoint sink answers after keeping a chunk.
GO_ON = "go"  # decode the next chunk
STEP_ASIDE = "yield"  # a job of higher priority waits: stop here, to continue later
STOP = "stop"  # the run is no longer wanted (cancelled, taken over) or could not be kept
Checkpoint = Callable[[dict[str, Any]], str]
# Audio is read from disk in blocks of this many seconds.
READ_BLOCK_SECONDS = 10.0
# Chunks start and end half a second from speech and hold no pause longer than the chunker's
# max_gap_s: text that starts or ends this much later or earlier, or leaves a hole this much
# longer, left speech out, and that stretch is decoded again.
HEAD_RETRY_SECONDS = 1.5
TAIL_RETRY_SECONDS = 1.5
GAP_RETRY_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class TranscribeRequest:
    job_id: str
    audio_path: str
    model: str
    options: DecodeOptions
    job_options: JobOptions = field(default_factory=JobOptions)
    # Chunks finished by earlier runs of this job (the store's checkpoints), in recording order.
    done: tuple[dict[str, Any], ...] = ()
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)


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


class _Run:
    """The state of one execute() call: where progress stands, what was sent live."""

    def __init__(
        self,
        request: TranscribeRequest,
        should_stop: Callable[[], bool],
        report: Callable[[float], None],
        emit: Callable[[dict[str, Any]], None] | None,
        checkpoint: Checkpoint | None,
    ) -> None:
        self.request = request
        self.should_stop = should_stop
        self.report = report
        self.emit = emit
        self.checkpoint = checkpoint
        self.channels = 1
        self.channel = 0  # index of the channel being read
        self.split = request.job_options.split_channels
        self.emitted = sum(len(c.get("segments", ())) for c in request.done)
        self.language: str | None = next((c["language"] for c in request.done if c.get("language")), None)

    def progress(self, seconds: float, duration: float) -> None:
        """Report `seconds` of the current channel done (of `duration`), over all channels."""
        fraction = min(1.0, seconds / duration) if duration > 0 else 0.0
        overall = (self.channel + fraction) / self.channels
        if self.request.job_options.diarize:
            overall *= 0.95  # the speaker pass comes after the last chunk
        if overall < 1.0 and self.should_stop():
            raise JobInterrupted
        self.report(min(overall, 0.999))

    def send(self, segment: Segment) -> None:
        if self.emit is None:
            return
        live = segment.as_dict()
        live["id"] = self.emitted
        if self.split:
            number = self.channel + 1
            live.update(channel=number, speaker=f"CHANNEL_{number}")
        self.emitted += 1
        self.emit(live)


def _untranscribed_stretches(
    manager: ModelManager,
    model: Any,
    run: _Run,
    options: DecodeOptions,
    pcm: Any,
    result: Result,
    offset: float,
    end_s: float,
) -> list[Segment]:
    """Whisper sometimes skips an utterance: it ends a window early, or jumps its timestamps
    past a short sentence. A chunk holds no pause longer than the chunker's `max_gap_s` and
    ends half a second after speech, so text that stops early, or leaves a longer hole between
    two segments, left speech out: each such stretch is decoded once more on its own."""
    span = pcm.size / audio.SAMPLE_RATE
    spoken = sorted((s.start, s.end) for s in result.segments if s.text.strip())
    if not spoken or not run.request.chunking.detect_speech:
        return []  # without the detector, a chunk's quiet stretches may well be silence
    holes = []
    if spoken[0][0] >= HEAD_RETRY_SECONDS:
        holes.append((0.0, spoken[0][0]))
    for (_, end), (start, _) in itertools.pairwise(spoken):
        if start - end >= run.request.chunking.max_gap_s + GAP_RETRY_MARGIN_SECONDS:
            holes.append((end, start))
    if span - spoken[-1][1] >= TAIL_RETRY_SECONDS:
        holes.append((spoken[-1][1], span))
    found: list[Segment] = []
    for hole_start, hole_end in holes:
        cut = max(0.0, hole_start - 0.1)  # a hair either side, so no word edge is clipped
        stop = min(span, hole_end + 0.1)
        hole_offset = offset + cut

        def on_segment(segment: Segment, hole_offset: float = hole_offset) -> None:
            run.send(segment.shifted(hole_offset, end_s))

        piece = pcm[round(cut * audio.SAMPLE_RATE) : round(stop * audio.SAMPLE_RATE)]
        again = manager.engine.transcribe(model, piece, options, lambda _: None, on_segment, run.should_stop)
        found += [s.shifted(hole_offset, end_s) for s in again.segments if s.text.strip()]
    return found


def _transcribe_stream(
    manager: ModelManager, model: Any, run: _Run, options: DecodeOptions, channel: int | None
) -> Result:
    """One channel (or the mix) of the recording, chunk by chunk, resuming after its checkpoints."""
    request = run.request
    index = channel or 0
    done = [c for c in request.done if int(c.get("channel", 0)) == index]
    resume = checkpoints_reach(done)
    segments = [Segment.from_dict(s) for c in done for s in c.get("segments", ())]
    stream = audio.AudioStream(Path(request.audio_path), READ_BLOCK_SECONDS, channel)
    duration = stream.declared_s or 0.0
    for chunk in speech_chunks(stream, request.chunking):
        if run.should_stop():
            raise JobInterrupted
        if chunk.end_s <= resume + 1e-3:
            continue  # decoded by an earlier run
        start = max(chunk.start, round(resume * audio.SAMPLE_RATE))
        pcm = chunk.audio[start - chunk.start :]
        offset, end_s = start / audio.SAMPLE_RATE, chunk.end_s
        span = end_s - offset
        if run.language is not None:
            options = replace(options, language=run.language)

        def on_progress(fraction: float, offset: float = offset, span: float = span) -> None:
            run.progress(offset + fraction * span, max(duration, offset + span))

        def on_segment(segment: Segment, offset: float = offset, end_s: float = end_s) -> None:
            run.send(segment.shifted(offset, end_s))

        result = manager.engine.transcribe(model, pcm, options, on_progress, on_segment, run.should_stop)
        if run.language is None and result.language:
            run.language = result.language  # detected on the first speech: kept for the rest
        found = [s.shifted(offset, end_s) for s in result.segments if s.text.strip()]
        found += _untranscribed_stretches(manager, model, run, options, pcm, result, offset, end_s)
        found.sort(key=lambda s: s.start)
        segments.extend(found)
        covered = (index * duration + end_s) / run.channels if duration > 0 else end_s
        verdict = GO_ON
        if run.checkpoint is not None:
            verdict = run.checkpoint(
                {
                    "channel": index,
                    "start": round(offset, 3),
                    "end": round(end_s, 3),
                    "language": run.language,
                    "segments": [s.as_dict() for s in found],
                    "transcribed_s": round(covered, 3),
                }
            )
        if verdict != GO_ON:
            raise JobInterrupted
        run.progress(end_s, max(duration, end_s))
    segments.sort(key=lambda s: s.start)
    segments = [replace(s, id=i) for i, s in enumerate(segments)]
    return Result(
        text=" ".join(s.text.strip() for s in segments).strip(),
        language=run.language or request.options.language,
        duration_s=stream.seconds,
        segments=segments,
    )


def execute(
    manager: ModelManager,
    request: TranscribeRequest,
    should_stop: Callable[[], bool],
    report: Callable[[float], None],
    emit: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Checkpoint | None = None,
) -> Result:
    """One job's inference: the recording chunk by chunk (each channel, when split), then
    speakers put on the result when asked, with the model pinned throughout.

    `emit` hears each segment as it is decoded, in the recording's time: before diarization
    (no speakers yet), and when split by channel with `channel` and `speaker` set, ids counted
    across channels so they stay distinct (the final result renumbers them in time order).
    `checkpoint` is handed each decoded chunk and answers GO_ON, STEP_ASIDE or STOP; anything
    but GO_ON ends the run with JobInterrupted, its finished chunks kept by the caller.
    """
    extras = request.job_options
    run = _Run(request, should_stop, report, emit, checkpoint)
    options = request.options
    if extras.word_timestamps or extras.diarize:
        options = replace(options, word_timestamps=True)
    with manager.using(request.model) as model:
        if run.language is None and manager.engine.is_english_only(request.model):
            run.language = "en"
        if run.language is None and options.language:
            run.language = options.language
        if extras.split_channels:
            channels = audio.AudioStream(Path(request.audio_path)).channels
            run.channels = channels
            results = []
            for index in range(channels):
                run.channel = index
                results.append(_transcribe_stream(manager, model, run, options, index))
            report(1.0)
            return merge_channel_results(results)
        result = _transcribe_stream(manager, model, run, options, None)
    if not extras.diarize:
        report(1.0)
        return result
    # Speaker turns still need the whole recording's audio at once (a bounded diarizer is
    # separate work); transcription above never does.
    pcm = audio.decode(Path(request.audio_path))
    speakers = DiarizationOptions(extras.num_speakers, extras.min_speakers, extras.max_speakers)
    result = _warm_diarizer()(pcm, result, speakers)
    report(1.0)
    return result
