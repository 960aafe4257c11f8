"""Speakers through the HTTP API: diarize=true and channels=split on real multi-speaker audio."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from conftest import ServerProcess, eval_clip, wait_for_status, word_error_rate

THREE_SPEAKERS = "picovoice_diarization_test.wav"
STEREO = "stereo_diarization.wav"


def post(server: ServerProcess, clip: str, **fields: str) -> requests.Response:
    with open(eval_clip(clip), "rb") as fp:
        return requests.post(server.url + "/transcribe", files={"file": fp}, data=fields, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = ServerProcess(tmp_path_factory.mktemp("dia") / "storage", extra_args=["--engine", "faster-whisper"])
    try:
        yield srv.start()
    finally:
        srv.kill()


@pytest.mark.slow
def test_diarize_labels_three_speakers_in_every_format(server: ServerProcess) -> None:
    assert post(server, THREE_SPEAKERS, job_id="three", diarize="true").status_code == 202
    done = wait_for_status(server.url, "three", {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["options"] == {"diarize": True}
    result = requests.get(server.url + "/download/three?format=json", timeout=10).json()
    speakers = [segment["speaker"] for segment in result["segments"]]
    assert sorted(set(speakers)) == ["SPEAKER_1", "SPEAKER_2", "SPEAKER_3"]
    assert speakers[0] == "SPEAKER_1"  # numbered by first appearance
    assert all(segment["words"] for segment in result["segments"])  # word times come with it
    txt = requests.get(server.url + "/download/three?format=txt", timeout=10).text
    assert txt.startswith("SPEAKER_1: ")
    srt = requests.get(server.url + "/download/three?format=srt", timeout=10).text
    assert "SPEAKER_2" in srt
    rttm = requests.get(server.url + "/download/three?format=rttm", timeout=10)
    assert rttm.status_code == 200
    assert rttm.text.splitlines()[0].startswith("SPEAKER three 1 ")


@pytest.mark.slow
def test_num_speakers_is_honoured(server: ServerProcess) -> None:
    assert post(server, THREE_SPEAKERS, job_id="two", diarize="true", num_speakers="2").status_code == 202
    done = wait_for_status(server.url, "two", {"completed", "failed"})
    result = requests.get(server.url + "/download/two?format=json", timeout=10).json()
    assert {segment["speaker"] for segment in result["segments"]} == {"SPEAKER_1", "SPEAKER_2"}, done


@pytest.mark.slow
def test_split_channels_labels_each_channel(server: ServerProcess) -> None:
    assert post(server, STEREO, job_id="call", channels="split").status_code == 202
    done = wait_for_status(server.url, "call", {"completed", "failed"})
    assert done["status"] == "completed", done
    result = requests.get(server.url + "/download/call?format=json", timeout=10).json()
    by_channel: dict[str, str] = {}
    for segment in result["segments"]:
        by_channel[segment["speaker"]] = by_channel.get(segment["speaker"], "") + segment["text"]
    assert set(by_channel) == {"CHANNEL_1", "CHANNEL_2"}
    left = (eval_clip(STEREO).parent / "stereo_diarization.left.txt").read_text()
    right = (eval_clip(STEREO).parent / "stereo_diarization.right.txt").read_text()
    assert word_error_rate(left, by_channel["CHANNEL_1"]) < 0.2
    assert word_error_rate(right, by_channel["CHANNEL_2"]) < 0.2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"diarize": "maybe"}, "diarize must be true or false"),
        ({"num_speakers": "2"}, "need diarize=true"),
        ({"diarize": "true", "num_speakers": "two"}, "whole number"),
        ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "more than max_speakers"),
        ({"channels": "split"}, "this one is mono"),
        ({"channels": "left"}, "channels must be"),
        ({"diarize": "true", "channels": "split"}, "not both"),
    ],
)
def test_bad_speaker_options_are_400_and_store_nothing(
    server: ServerProcess, fields: dict[str, str], fragment: str
) -> None:
    resp = post(server, "LDC93S1.wav", job_id="bad-opts", **fields)
    assert resp.status_code == 400 and fragment in resp.json()["error"], resp.text
    assert requests.get(server.url + "/status/bad-opts", timeout=10).status_code == 404


@pytest.mark.slow
def test_resubmitting_with_other_speaker_options_is_409(server: ServerProcess) -> None:
    assert post(server, "LDC93S1.wav", job_id="opt-a").status_code == 202
    resp = post(server, "LDC93S1.wav", job_id="opt-a", diarize="true")
    assert resp.status_code == 409 and "other options" in resp.json()["error"]
