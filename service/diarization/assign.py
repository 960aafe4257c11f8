"""Put speaker turns onto a transcript: label words, split segments where the speaker changes.

Pure functions on `Result`s; no models. Speakers are renamed `SPEAKER_1`, `SPEAKER_2`, ... by
first appearance in the transcript, so the names read in order whatever the clustering said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.engines.base import Result, Segment, SpeakerTurn, Word


def speaker_at(start: float, end: float, turns: Sequence[SpeakerTurn]) -> str | None:
    """The speaker who talks most within [start, end]; the nearest turn's when none overlaps."""
    if not turns:
        return None
    talk: dict[str, float] = {}
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > 0:
            talk[turn.speaker] = talk.get(turn.speaker, 0.0) + overlap
    if talk:
        return max(talk, key=lambda speaker: talk[speaker])
    middle = (start + end) / 2
    nearest = min(turns, key=lambda t: max(t.start - middle, middle - t.end, 0.0))
    return nearest.speaker


def _smooth_words(labels: list[str], words: Sequence[Word], min_run_s: float) -> list[str]:
    """A run of words shorter than `min_run_s` between words of one other speaker joins them."""
    labels = list(labels)
    changed = True
    while changed:
        changed = False
        runs: list[tuple[int, int]] = []  # [first, last] word index of each run of one label
        for index, label in enumerate(labels):
            if runs and labels[runs[-1][0]] == label:
                runs[-1] = (runs[-1][0], index)
            else:
                runs.append((index, index))
        for k in range(1, len(runs) - 1):
            first, last = runs[k]
            before, after = labels[runs[k - 1][0]], labels[runs[k + 1][0]]
            if before == after and words[last].end - words[first].start < min_run_s:
                labels[first : last + 1] = [before] * (last - first + 1)
                changed = True
                break
    return labels


def _split(segment: Segment, turns: Sequence[SpeakerTurn], min_run_s: float) -> list[Segment]:
    words = segment.words or []
    if not words:
        speaker = speaker_at(segment.start, segment.end, turns)
        return [replace(segment, speaker=speaker)]
    labels = [speaker_at(w.start, max(w.end, w.start + 0.02), turns) or "" for w in words]
    labels = _smooth_words(labels, words, min_run_s)
    pieces: list[Segment] = []
    group: list[Word] = []
    for index, word in enumerate(words):
        group.append(word)
        if index + 1 == len(words) or labels[index + 1] != labels[index]:
            first_piece, last_piece = not pieces, index + 1 == len(words)
            pieces.append(
                replace(
                    segment,
                    start=segment.start if first_piece else group[0].start,
                    end=segment.end if last_piece else group[-1].end,
                    text=segment.text if first_piece and last_piece else "".join(w.word for w in group),
                    words=group,
                    speaker=labels[index],
                )
            )
            group = []
    return pieces


def _names_by_first_appearance(segments: Sequence[Segment], turns: Sequence[SpeakerTurn]) -> dict[str, str]:
    """SPEAKER_n in order of first words; speakers heard but never transcribed come after."""
    names: dict[str, str] = {}
    for speaker in [s.speaker for s in segments] + [t.speaker for t in turns]:
        if speaker is not None and speaker not in names:
            names[speaker] = f"SPEAKER_{len(names) + 1}"
    return names


def assign_speakers(result: Result, turns: Sequence[SpeakerTurn], min_run_s: float = 0.5) -> Result:
    """A new Result whose segments carry `speaker`, split between words where the speaker changes.

    Without word timestamps a segment goes whole to the speaker who talks most within it. With
    no turns at all (no speech found), everything is one speaker.
    """
    if not turns:
        turns = [SpeakerTurn(0.0, max(result.duration_s, 1e-3), "SPEAKER_1")]
    pieces: list[Segment] = []
    for segment in result.segments:
        pieces.extend(_split(segment, turns, min_run_s))
    names = _names_by_first_appearance(pieces, turns)
    segments = [
        replace(segment, id=index, speaker=names[segment.speaker] if segment.speaker else None)
        for index, segment in enumerate(pieces)
    ]
    renamed = [replace(turn, speaker=names[turn.speaker]) for turn in turns]
    return replace(result, segments=segments, speaker_turns=renamed)


def drop_words(result: Result) -> Result:
    """The same transcript without word timings (diarization asks for them; a client may not)."""
    return replace(result, segments=[replace(segment, words=None) for segment in result.segments])


def merge_channel_results(results: Sequence[Result], label: str = "CHANNEL_{n}") -> Result:
    """One Result from per-channel transcripts (channel n labelled `label.format(n=n)`, n from 1).

    Segments are sorted by start time (channel order breaks ties), renumbered, and the text is
    theirs joined in that order. For stereo call recordings with one speaker per channel.
    """
    tagged: list[tuple[float, int, Segment]] = []
    for channel, result in enumerate(results, start=1):
        for segment in result.segments:
            tagged.append((segment.start, channel, replace(segment, speaker=label.format(n=channel))))
    tagged.sort(key=lambda item: (item[0], item[1]))
    segments = [replace(segment, id=index) for index, (_, _, segment) in enumerate(tagged)]
    language = next((r.language for r in results if r.language), None)
    return Result(
        text=" ".join(segment.text.strip() for segment in segments if segment.text.strip()),
        language=language,
        duration_s=max((r.duration_s for r in results), default=0.0),
        segments=segments,
    )
