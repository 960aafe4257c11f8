"""Several speech chunks decoded in one CTranslate2 call: what batching faster-whisper means here.

faster-whisper's own `BatchedInferencePipeline` is fast but loses words (a fifth of them on an
hour-long recording): it decodes each chunk without timestamps, so Whisper may end a passage
after its first sentence and nothing notices; it takes only the first temperature, so a window
that fails the quality checks is kept as it is; and it never decodes the rest of a window whose
text stopped early. Here each chunk's first window is decoded exactly as the sequential path
decodes it (with timestamps, the same prompt, beam, suppression and first temperature), only
together with the others; what the sequential path would do next is then left to it:

- a window that fails the quality checks (gzip ratio over 2.4, or mean log-probability under -1
  where Whisper does not call it silence) is marked `failed`, to be decoded again on its own
  with the temperature fallback;
- a window whose text stops before the chunk's end without closing it (where the sequential path
  seeks to the last timestamp and decodes on) says where to `resume`, and the rest is decoded on
  its own with the text so far as its prompt.

Both are rare, so a batch costs one encoder pass and one decoder pass over its chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engines.base import DecodeOptions, Segment, Word

# Whisper's quality checks and defaults, as faster-whisper's sequential transcribe applies them.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_INITIAL_TIMESTAMP_S = 1.0
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
WINDOW_FRAMES = 3000  # mel frames in Whisper's 30 s window


@dataclass
class Decoded:
    """One chunk's first window: its segments (chunk time), or why it needs more."""

    segments: list[Segment]
    failed: bool = False  # failed the quality checks: decode it again with the fallback ladder
    resume_s: float | None = None  # text stopped early: decode on from here (seconds into the chunk)


def decode_batch(
    model: Any, pieces: Sequence[np.ndarray], options: DecodeOptions, language: str
) -> list[Decoded]:
    """Each piece (16 kHz mono, at most 30 s) decoded in one batch; see the module's docstring."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task=options.task, language=language
    )
    frames: list[int] = []
    windows = []
    for pcm in pieces:
        features = model.feature_extractor(pcm)
        content = min(WINDOW_FRAMES, features.shape[-1] - 1)
        frames.append(content)
        windows.append(pad_or_trim(features[:, :content]))
    encoded = model.encode(np.stack(windows))

    previous: list[int] = []
    if options.initial_prompt:
        previous = tokenizer.encode(" " + options.initial_prompt.strip())
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=False)
    temperatures = options.temperatures() or DEFAULT_TEMPERATURES
    first = temperatures[0]
    if first > 0:
        sampling: dict[str, Any] = {
            "beam_size": 1,
            "num_hypotheses": options.beam_size,
            "sampling_topk": 0,
            "sampling_temperature": first,
        }
    else:
        sampling = {"beam_size": options.beam_size, "patience": 1.0}
    outputs = model.model.generate(
        encoded,
        [list(prompt) for _ in pieces],
        length_penalty=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_length=model.max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / model.time_precision),
        **sampling,
    )

    decoded: list[Decoded] = []
    pieces_tokens: list[list[dict[str, Any]]] = []  # per piece, as add_word_timestamps reads them
    for output, content in zip(outputs, frames, strict=True):
        tokens = list(output.sequences_ids[0])
        avg_logprob = float(output.scores[0]) * len(tokens) / (len(tokens) + 1)
        ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
        silence = output.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD
        poor = ratio > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOG_PROB_THRESHOLD
        if poor and not silence and len(temperatures) > 1:
            decoded.append(Decoded([], failed=True))
            pieces_tokens.append([])
            continue
        if silence:  # the sequential path skips such a window: no speech in it
            decoded.append(Decoded([]))
            pieces_tokens.append([])
            continue
        parts, resume = _split(tokens, tokenizer.timestamp_begin, content, model)
        for part in parts:
            part["keep"] = part["start"] != part["end"] and bool(tokenizer.decode(part["tokens"]).strip())
        segments = [
            Segment(
                id=index,
                start=part["start"],
                end=part["end"],
                text=tokenizer.decode(part["tokens"]),
                avg_logprob=avg_logprob,
                no_speech_prob=float(output.no_speech_prob),
                seek=0,
                tokens=[int(t) for t in part["tokens"]],
                temperature=first,
                compression_ratio=ratio,
            )
            for index, part in enumerate(p for p in parts if p["keep"])
        ]
        decoded.append(Decoded(segments, resume_s=resume))
        pieces_tokens.append(parts)

    if options.word_timestamps and any(pieces_tokens):
        _add_words(model, tokenizer, encoded, frames, pieces_tokens, decoded)
    return decoded


def _split(
    tokens: list[int], begin: int, content: int, model: Any
) -> tuple[list[dict[str, Any]], float | None]:
    """A window's tokens cut into segments at consecutive timestamps (Whisper's own rule), and
    where decoding would go on: None when the window is done (it ends on a single timestamp, or
    has no segment boundary at all), else the last timestamp, when before the content's end."""
    single_ending = len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]
    cuts = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    if not cuts:
        stamps = [t for t in tokens if t >= begin]
        end = content / model.frames_per_second
        if stamps and stamps[-1] != begin:
            end = (stamps[-1] - begin) * model.time_precision
        return [{"seek": 0, "start": 0.0, "end": end, "tokens": tokens, "open": not single_ending}], None
    if single_ending:
        cuts.append(len(tokens))
    parts = []
    last = 0
    for cut in cuts:
        piece = tokens[last:cut]
        parts.append(
            {
                "seek": 0,
                "start": (piece[0] - begin) * model.time_precision,
                "end": (piece[-1] - begin) * model.time_precision,
                "tokens": piece,
                "open": not single_ending,
            }
        )
        last = cut
    if single_ending:
        return parts, None
    stop = (tokens[last - 1] - begin) * model.input_stride  # frames
    return parts, (stop / model.frames_per_second if stop < content else None)


def _add_words(
    model: Any,
    tokenizer: Any,
    encoded: Any,
    frames: list[int],
    pieces_tokens: list[list[dict[str, Any]]],
    decoded: list[Decoded],
) -> None:
    """Word times for every piece at once (one alignment pass over the batch's encoder output)."""
    model.add_word_timestamps(
        pieces_tokens,
        tokenizer,
        encoded,
        frames,
        PREPEND_PUNCTUATIONS,
        APPEND_PUNCTUATIONS,
        0.0,
    )
    for index, (parts, result) in enumerate(zip(pieces_tokens, decoded, strict=True)):
        kept = [part for part in parts if part["keep"]]
        for part, segment in zip(kept, result.segments, strict=True):
            words = part.get("words") or []
            segment.words = [
                Word(float(w["start"]), float(w["end"]), str(w["word"]), float(w["probability"]))
                for w in words
            ]
            segment.start, segment.end = float(part["start"]), float(part["end"])
        if parts and parts[-1]["open"]:
            # As the sequential path does with word times: a window not closed by a single
            # timestamp goes on from its last word's end.
            ends = [float(w["end"]) for part in parts for w in part.get("words") or []]
            if ends and ends[-1] > 0:
                content_s = frames[index] / model.frames_per_second
                result.resume_s = ends[-1] if ends[-1] < content_s else None
