"""Offline speaker diarization: who spoke when, put onto a Whisper transcript.

Speech regions come from Silero VAD (bundled with faster-whisper), speaker embeddings from
Resemblyzer's voice encoder (weights in its wheel), and clustering from SciPy; nothing is
downloaded. Everything blocks: run it off the event loop.

    diarizer = Diarizer(); diarizer.load()                 # once, kept warm by the worker
    result = engine.transcribe(model, pcm, replace(options, word_timestamps=True), progress)
    result = diarizer(pcm, result, DiarizationOptions(max_speakers=4))

Stereo calls with one speaker per channel: transcribe `audio.decode_channels(path)[i]` for each
channel, then `merge_channel_results(results)`.
"""

from service.diarization.assign import assign_speakers, drop_words, merge_channel_results
from service.diarization.encoder import EncoderUnavailable
from service.diarization.pipeline import DiarizationOptions, Diarizer, DiarizerConfig, diarize
from service.engines.base import SpeakerTurn

__all__ = [
    "DiarizationOptions",
    "Diarizer",
    "DiarizerConfig",
    "EncoderUnavailable",
    "SpeakerTurn",
    "assign_speakers",
    "diarize",
    "drop_words",
    "merge_channel_results",
]
