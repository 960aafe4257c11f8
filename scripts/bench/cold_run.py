"""One cold transcription, the way agents ran Whisper before the service: a fresh process per file.

    python scripts/bench/cold_run.py CHECKPOINT.pt AUDIO BEAM_SIZE

Imports whisper, loads the checkpoint, decodes the audio and transcribes it with the service's
decoding options, then prints one JSON line with the time each step took (the parent times the
whole process, interpreter start-up included).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    checkpoint, audio_path, beam_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    started = time.perf_counter()
    import torch
    import whisper

    from service.inference.audio import decode

    imported = time.perf_counter()
    model = whisper.load_model(checkpoint, device="cpu")
    loaded = time.perf_counter()
    pcm = decode(Path(audio_path))
    decoded = time.perf_counter()
    beam = {"beam_size": beam_size, "best_of": beam_size} if beam_size > 1 else {}
    with torch.inference_mode():
        result = model.transcribe(torch.from_numpy(pcm), language="en", fp16=False, verbose=None, **beam)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "load_s": loaded - imported,
                "decode_s": decoded - loaded,
                "transcribe_s": done - decoded,
                "text": str(result["text"]).strip(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
