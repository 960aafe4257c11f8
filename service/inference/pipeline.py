"""One job's inference, as it runs inside whichever runner holds the models.

A recording is read as a stream and cut into speech chunks at pauses (`chunking`); each chunk
is decoded on its own and handed to `checkpoint` before the next one starts, which makes it
durable and says whether to go on. A job that was interrupted (crash, restart, shutdown, a
higher-priority job) passes its checkpoints back in and resumes after the last of them.
Memory stays at about a chunk of audio plus the transcript, however long the recording.

With an engine that decodes batches (`BatchTranscriber`, faster-whisper), up to `batch_size`
chunks are read ahead and decoded in one call; each is then kept in order exactly as a chunk
decoded alone would be (segments sent, skipped stretches decoded again, checkpoint, verdict).
A batch is the unit of pre-emption: stepping aside keeps the whole batch, and a crash loses at
most the batch in flight. Memory grows by the batch's audio and features (a few MiB each).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from service.diarization.assign import merge_channel_results
from service.diarization.pipeline import DiarizationOptions, Diarizer
from service.engines.base import BatchTranscriber, DecodeOptions, JobInterrupted, Result, Segment
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
    # Chunks decoded together (engines that batch; the service passes --batch-size): 0 is the
    # engine's choice for its device; 1 is one chunk at a time, streamed segment by segment.
    batch_size: int = 1


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
        # Damaged stretches the decoder skipped (the most in any one channel), for the job's note.
        self.skipped_packets = 0
        self.skipped_s = 0.0

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


@dataclass(frozen=True)
class _Piece:
    """What is left to decode of one chunk: its audio and where it sits in the recording."""

    pcm: Any
    offset: float  # seconds from the recording's start
    end_s: float


def _pieces(run: _Run, stream: audio.AudioStream, resume: float) -> Iterator[_Piece]:
    """The recording's chunks after `resume` (what earlier runs kept), in order."""
    for chunk in speech_chunks(stream, run.request.chunking):
        if run.should_stop():
            raise JobInterrupted
        if chunk.end_s <= resume + 1e-3:
            continue  # decoded by an earlier run
        start = max(chunk.start, round(resume * audio.SAMPLE_RATE))
        yield _Piece(chunk.audio[start - chunk.start :], start / audio.SAMPLE_RATE, chunk.end_s)


def batch_size(manager: ModelManager, request: TranscribeRequest) -> int:
    """Chunks decoded per call for this job: 1 when the engine cannot batch."""
    engine = manager.engine
    if not isinstance(engine, BatchTranscriber):
        return 1
    return max(1, request.batch_size or engine.auto_batch_size())


def _decode_alone(
    manager: ModelManager, model: Any, run: _Run, options: DecodeOptions, piece: _Piece, duration: float
) -> Result:
    """One chunk, its segments sent and progress reported as they decode."""
    offset, end_s = piece.offset, piece.end_s
    span = end_s - offset

    def on_progress(fraction: float) -> None:
        run.progress(offset + fraction * span, max(duration, offset + span))

    def on_segment(segment: Segment) -> None:
        run.send(segment.shifted(offset, end_s))

    return manager.engine.transcribe(model, piece.pcm, options, on_progress, on_segment, run.should_stop)


def _transcribe_stream(
    manager: ModelManager, model: Any, run: _Run, options: DecodeOptions, channel: int | None
) -> Result:
    """One channel (or the mix) of the recording, chunk by chunk (or batch by batch), resuming
    after its checkpoints."""
    request = run.request
    index = channel or 0
    done = [c for c in request.done if int(c.get("channel", 0)) == index]
    segments = [Segment.from_dict(s) for c in done for s in c.get("segments", ())]
    stream = audio.AudioStream(Path(request.audio_path), READ_BLOCK_SECONDS, channel)
    duration = stream.declared_s or 0.0
    size = batch_size(manager, request)
    pending = _pieces(run, stream, checkpoints_reach(done))
    while True:
        # The language is found on the first speech, alone; batches need it settled.
        batch = list(itertools.islice(pending, size if run.language is not None else 1))
        if not batch:
            break
        if run.language is not None:
            options = replace(options, language=run.language)
        if len(batch) == 1:
            results = [_decode_alone(manager, model, run, options, batch[0], duration)]
        else:
            engine = manager.engine
            assert isinstance(engine, BatchTranscriber)
            results = engine.transcribe_batch(model, [p.pcm for p in batch], options, run.should_stop)
        if run.language is None and results[0].language:
            run.language = results[0].language  # detected on the first speech: kept for the rest
        stepping_aside = False
        for piece, result in zip(batch, results, strict=True):
            if len(batch) > 1:
                for segment in result.segments:
                    run.send(segment.shifted(piece.offset, piece.end_s))
            found = [s.shifted(piece.offset, piece.end_s) for s in result.segments if s.text.strip()]
            found += _untranscribed_stretches(
                manager, model, run, options, piece.pcm, result, piece.offset, piece.end_s
            )
            found.sort(key=lambda s: s.start)
            segments.extend(found)
            verdict = _keep(run, index, duration, piece, found)
            if verdict == STOP:
                raise JobInterrupted
            # Stepping aside keeps the rest of the batch first: it is decoded already.
            stepping_aside = stepping_aside or verdict != GO_ON
            if not stepping_aside:
                run.progress(piece.end_s, max(duration, piece.end_s))
        if stepping_aside:
            raise JobInterrupted
    segments.sort(key=lambda s: s.start)
    segments = [replace(s, id=i) for i, s in enumerate(segments)]
    run.skipped_packets = max(run.skipped_packets, stream.skipped_packets)
    run.skipped_s = max(run.skipped_s, stream.skipped_s)
    return Result(
        text=" ".join(s.text.strip() for s in segments).strip(),
        language=run.language or request.options.language,
        duration_s=stream.seconds,
        segments=segments,
    )


def _keep(run: _Run, index: int, duration: float, piece: _Piece, found: list[Segment]) -> str:
    """Hand one decoded chunk to the checkpoint sink; its verdict (GO_ON without a sink)."""
    if run.checkpoint is None:
        return GO_ON
    covered = (index * duration + piece.end_s) / run.channels if duration > 0 else piece.end_s
    return run.checkpoint(
        {
            "channel": index,
            "start": round(piece.offset, 3),
            "end": round(piece.end_s, 3),
            "language": run.language,
            "segments": [s.as_dict() for s in found],
            "transcribed_s": round(covered, 3),
        }
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
            return _with_skips(merge_channel_results(results), run)
        result = _with_skips(_transcribe_stream(manager, model, run, options, None), run)
    if not extras.diarize:
        report(1.0)
        return result
    # Speaker turns read the recording again, block by block: memory stays bounded here too.
    blocks = audio.AudioStream(Path(request.audio_path), READ_BLOCK_SECONDS)
    speakers = DiarizationOptions(extras.num_speakers, extras.min_speakers, extras.max_speakers)
    result = _warm_diarizer().label_stream(blocks, result, speakers)
    report(1.0)
    return result


def _with_skips(result: Result, run: _Run) -> Result:
    return replace(result, skipped_packets=run.skipped_packets, skipped_s=run.skipped_s)
