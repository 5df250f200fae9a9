"""``manage.py transcribe_convert_model`` on the packaged tiny.en, and the engine loading what it wrote."""

from __future__ import annotations

import shutil
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import load_wav, wer
from transcribe.engines.openai import OpenAIWhisperEngine
from transcribe.engines.resolver import resolve_model

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings


def test_converts_to_output_and_the_engine_loads_it(
    tmp_path: Path, audio_dir: Path, refs: dict[str, str]
) -> None:
    path = tmp_path / "models" / "tiny.en.pt"
    out = StringIO()
    call_command("transcribe_convert_model", "tiny.en", "--output", str(path), stdout=out)
    assert path.is_file()
    printed = out.getvalue()
    assert str(path) in printed
    assert f'TRANSCRIBE = {{"ENGINE": "openai-whisper", "MODEL": "{path}"}}' in printed

    engine = OpenAIWhisperEngine.from_settings(str(path), device="cpu", cpu_threads=0)
    clip = "librispeech_61-70968-0002.wav"
    result = engine.transcribe_numpy(load_wav(audio_dir / clip), "en")
    assert wer(refs[clip], result.text) == 0.0  # measured 0.0 ("a golden fortune and a happy life.")
    assert len(result.words) == 7


def test_defaults_to_the_setting_and_the_engine_cache(tmp_path: Path, settings: Settings) -> None:
    settings.TRANSCRIBE = {"ENGINE": "openai-whisper", "MODEL": "tiny.en", "MODEL_CACHE": str(tmp_path)}
    out = StringIO()
    call_command("transcribe_convert_model", stdout=out)
    cached = tmp_path / "openai" / "tiny.en.pt"
    assert cached.is_file() and str(cached) in out.getvalue()
    # The engine finds the command's output where it would have converted to itself.
    engine = OpenAIWhisperEngine.from_settings("tiny.en", device="cpu", cpu_threads=0)
    assert engine.checkpoint == cached


def test_errors_are_command_errors(tmp_path: Path, settings: Settings) -> None:
    settings.TRANSCRIBE = {"MODEL_CACHE": str(tmp_path / "cache")}
    with pytest.raises(CommandError, match=r"No weights found for TRANSCRIBE\['MODEL'\] = 'no-such-model'"):
        call_command("transcribe_convert_model", "no-such-model", "--output", str(tmp_path / "x.pt"))
    with pytest.raises(CommandError, match="already an openai-whisper checkpoint"):
        call_command("transcribe_convert_model", str(tmp_path / "model.pt"))

    broken = tmp_path / "broken"
    broken.mkdir()
    source = resolve_model("tiny.en", cache=tmp_path / "cache")
    shutil.copy(source / "config.json", broken / "config.json")
    with open(source / "model.bin", "rb") as src:
        (broken / "model.bin").write_bytes(src.read(1_000_000))
    with pytest.raises(CommandError, match="truncated"):
        call_command("transcribe_convert_model", str(broken), "--output", str(tmp_path / "broken.pt"))
    assert not (tmp_path / "broken.pt").exists()
