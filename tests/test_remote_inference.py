"""Remote inference (INFERENCE="channels") in one process: sessions send jobs over the channel layer
to an inference worker running beside them; the multi-node test does the same across processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.test import override_settings

from tests.conftest import load_wav, wer
from tests.test_consumers import communicator, start, stream
from transcribe.engines import get_engine
from transcribe.engines.base import DecodeOptions
from transcribe.streaming.remote import (
    INFERENCE_CHANNEL,
    decode_job,
    encode_job,
    transcription_from_dict,
    transcription_to_dict,
)
from transcribe.streaming.replay import pcm_s16le
from transcribe.workers import InferenceWorkerServer, run_job

pytestmark = pytest.mark.django_db(transaction=True)
# Generous: a beam-5 final of 11 s takes seconds on a busy 2-core machine, and a retry of a job
# that was only slow would just queue more work.
REMOTE = {"INFERENCE": "channels", "INFERENCE_TIMEOUT": 20.0, "INFERENCE_RETRIES": 2}


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("alice")


@pytest.fixture
async def worker() -> AsyncIterator[InferenceWorkerServer]:
    """One inference worker on this event loop, reading the in-memory layer's job channel."""
    layer = get_channel_layer()
    server = InferenceWorkerServer(application=None, channels=[INFERENCE_CHANNEL], channel_layer=layer)
    task = asyncio.create_task(server.listener(INFERENCE_CHANNEL))
    yield server
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await layer.flush()


def test_jobs_and_results_survive_the_wire(audio_dir: Path) -> None:
    audio = load_wav(audio_dir / "jfk.wav")[:48_000]
    options = DecodeOptions(beam_size=5, prompt="Kennedy", temperature=(0.0, 0.2), encoder_seconds=10.0)
    job = encode_job("j1", "reply!1", audio, "en", options)
    assert len(job["audio"]) == 2 * len(audio)  # int16: half of float32
    back, language, opts = decode_job(job)
    assert language == "en" and opts.beam_size == 5 and opts.temperature == (0.0, 0.2)
    assert opts.prompt == "Kennedy" and opts.encoder_seconds == 10.0
    np.testing.assert_array_equal(back, audio)  # the worker hears the very samples read from the WAV
    result = get_engine().transcribe_numpy(back, "en", opts)
    again = transcription_from_dict(transcription_to_dict(result))
    assert again == result and again.words and again.text == result.text


async def test_a_bad_job_is_answered_with_an_error_not_a_dead_worker() -> None:
    layer = get_channel_layer()
    reply = await layer.new_channel()
    await run_job(
        layer, {"type": "inference.job", "job": "x", "reply": reply, "audio": b"\0\0", "options": {}}
    )
    answer = await asyncio.wait_for(layer.receive(reply), 5)
    assert answer["job"] == "x" and answer["ok"] is False and answer["error"]


@override_settings(TRANSCRIBE=REMOTE)
async def test_a_session_transcribes_on_a_remote_worker(
    user: Any, worker: InferenceWorkerServer, audio_dir: Path, refs: dict[str, str]
) -> None:
    comm = communicator(user)
    await start(comm)
    events = await stream(comm, pcm_s16le(load_wav(audio_dir / "jfk.wav")))
    assert wer(refs["jfk.wav"], events[-1]["text"]) <= 0.15  # see test_pcm_stream_gives_stored_finals
    assert [e["seq"] for e in events if e["type"] == "final"] == [1, 2, 3, 4][
        : len([e for e in events if e["type"] == "final"])
    ]


@override_settings(TRANSCRIBE={**REMOTE, "INFERENCE_TIMEOUT": 12.0})
async def test_a_worker_that_dies_mid_job_does_not_stall_the_session(
    user: Any, audio_dir: Path, refs: dict[str, str]
) -> None:
    layer = get_channel_layer()

    async def dies_with_a_job() -> None:
        await layer.receive(INFERENCE_CHANNEL)  # takes a job, then never answers

    # The in-memory layer hands a channel to one receiver at a time, so the healthy worker starts
    # once the doomed one has taken its job (with Redis they would simply both wait).
    doomed = asyncio.create_task(dies_with_a_job())
    comm = communicator(user)
    await start(comm)
    streaming = asyncio.create_task(
        stream(comm, pcm_s16le(load_wav(audio_dir / "librispeech_61-70968-0002.wav")))
    )
    await asyncio.wait_for(doomed, 30)
    server = InferenceWorkerServer(application=None, channels=[INFERENCE_CHANNEL], channel_layer=layer)
    healthy = asyncio.create_task(server.listener(INFERENCE_CHANNEL))
    try:
        events = await streaming
    finally:
        healthy.cancel()
        await asyncio.gather(healthy, return_exceptions=True)
        await layer.flush()
    assert doomed.done(), "the dying worker never got a job"
    retries = [e for e in events if e["type"] == "status" and "inference" in e]
    assert retries and "retrying" in retries[0]["inference"]
    assert wer(refs["librispeech_61-70968-0002.wav"], events[-1]["text"]) <= 0.15


@override_settings(TRANSCRIBE={"INFERENCE": "channels"})
def test_remote_inference_needs_a_shared_channel_layer() -> None:
    errors = [e for e in run_checks() if e.id == "transcribe.E005"]
    assert errors and "channel layer" in errors[0].msg
