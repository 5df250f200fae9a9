"""The openai-whisper engine on the packaged tiny.en weights converted from CTranslate2, on real speech."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.conftest import load_wav, normalize, wer
from transcribe.engines.base import SAMPLE_RATE, DecodeOptions, STTEngine
from transcribe.engines.convert import convert_ct2_to_openai, read_ct2_model
from transcribe.engines.faster import FasterWhisperEngine
from transcribe.engines.openai import OpenAIWhisperEngine, default_checkpoint_path, load_checkpoint
from transcribe.engines.resolver import resolve_model
from transcribe.exceptions import EngineError

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="session")
def ct2_tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged CTranslate2 tiny.en folder, found the way the engines find it."""
    return resolve_model("tiny.en", cache=tmp_path_factory.mktemp("ct2-cache"))


@pytest.fixture(scope="session")
def openai_checkpoint(ct2_tiny_en: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en converted once per session: conversion and loading cost seconds, and every test reads it only."""
    return convert_ct2_to_openai(ct2_tiny_en, tmp_path_factory.mktemp("openai") / "tiny.en.pt")


@pytest.fixture(scope="session")
def openai_engine(openai_checkpoint: Path) -> OpenAIWhisperEngine:
    """One loaded engine for the session (loading is ~0.5 s, the first word-timestamp call compiles numba's DTW)."""
    return OpenAIWhisperEngine(openai_checkpoint, model_name="tiny.en")


@pytest.fixture(scope="session")
def faster_engine(ct2_tiny_en: Path) -> FasterWhisperEngine:
    """The default engine on the same weights, as the reference the converted model must agree with."""
    return FasterWhisperEngine(ct2_tiny_en, model_name="tiny.en")


def write_ct2_model(source: Path, output: Path, quantization: str) -> Path:
    """Re-save the CTranslate2 model in ``source`` with ctranslate2's own spec writer and ``quantization``.

    This gives genuine int8 / float32 model.bin files without downloading anything.
    """
    from ctranslate2.specs import WhisperSpec

    model = read_ct2_model(source / "model.bin")
    v = model.variables
    layers = {
        n: len({m.group(1) for k in v if (m := re.match(rf"{n}/layer_(\d+)/", k))})
        for n in ("encoder", "decoder")
    }
    heads = {n: int(v[f"{n}/num_heads"].array) for n in ("encoder", "decoder")}
    spec = WhisperSpec(layers["encoder"], heads["encoder"], layers["decoder"], heads["decoder"])
    for name, var in v.items():
        if var.array.ndim:  # scalars (num_heads, activation, ...) are the spec's own defaults
            obj = spec
            *scopes, attr = name.split("/")
            for scope in scopes:
                m = re.fullmatch(r"(.+)_(\d+)", scope)
                if m and isinstance(getattr(obj, m.group(1), None), list):
                    obj = getattr(obj, m.group(1))[int(m.group(2))]
                else:
                    obj = getattr(obj, scope)
            setattr(obj, attr, var.array)
    spec.decoder.projection.weight = v["decoder/embeddings/weight"].array
    spec.register_vocabulary((source / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    spec.validate()
    spec.optimize(quantization=quantization)
    output.mkdir(parents=True)
    spec.save(str(output))
    shutil.copy(source / "config.json", output / "config.json")
    return output


# ---------------------------------------------------------------- conversion


def test_checkpoint_loads_with_whisper_load_model(openai_checkpoint: Path, ct2_tiny_en: Path) -> None:
    import json

    import torch
    import whisper

    model = whisper.load_model(str(openai_checkpoint), device="cpu")
    assert model.dims.n_mels == 80 and model.dims.n_vocab == 51864  # tiny.en: English-only vocabulary
    assert (model.dims.n_audio_layer, model.dims.n_audio_head, model.dims.n_audio_state) == (4, 6, 384)
    assert (model.dims.n_text_layer, model.dims.n_text_head, model.dims.n_text_ctx) == (4, 6, 448)
    assert not model.is_multilingual
    checkpoint = torch.load(openai_checkpoint, map_location="cpu", weights_only=True)
    expected = json.loads((ct2_tiny_en / "config.json").read_text())["alignment_heads"]
    assert checkpoint["alignment_heads"] == expected
    assert set(checkpoint["model_state_dict"]) == set(model.state_dict())
    assert not list(openai_checkpoint.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_conversion_matches_ctranslate2_numerically(
    openai_checkpoint: Path, ct2_tiny_en: Path, audio_dir: Path
) -> None:
    """Same weights, same maths: the encoder output and the no-speech probability agree with ctranslate2 in float32."""
    import ctranslate2
    import torch
    import whisper

    model = load_checkpoint(openai_checkpoint)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(load_wav(audio_dir / "jfk.wav")), model.dims.n_mels)
    with torch.no_grad():
        ours = model.encoder(mel[None]).numpy()
    ct2 = ctranslate2.models.Whisper(str(ct2_tiny_en), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy()))
    theirs = np.array(ct2.encode(features, to_cpu=True))
    assert np.abs(ours - theirs).max() < 1e-3  # measured 2.6e-5 (activations up to ~12)

    prompt = [50257, 50362]  # <|startoftranscript|><|notimestamps|> of the English-only vocabulary
    reference = ct2.generate(features, [prompt], beam_size=1, return_no_speech_prob=True)[0]
    result = whisper.decode(
        model, mel, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    )
    assert abs(result.no_speech_prob - reference.no_speech_prob) < 1e-4  # measured 1e-7
    assert result.tokens == reference.sequences_ids[0]  # greedy decoding picks the same tokens


def test_alignment_heads_come_from_config(openai_engine: OpenAIWhisperEngine) -> None:
    heads = openai_engine.model.alignment_heads.to_dense().nonzero().tolist()
    assert heads == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]


def test_float32_model_converts_like_float16(
    ct2_tiny_en: Path, openai_checkpoint: Path, tmp_path: Path
) -> None:
    import torch

    ct2_f32 = write_ct2_model(ct2_tiny_en, tmp_path / "f32", "float32")
    assert {
        v.dtype for k, v in read_ct2_model(ct2_f32 / "model.bin").variables.items() if k.endswith("weight")
    } == {"float32"}
    out = convert_ct2_to_openai(ct2_f32, tmp_path / "f32.pt")
    f32 = torch.load(out, weights_only=True)["model_state_dict"]
    f16 = torch.load(openai_checkpoint, weights_only=True)["model_state_dict"]
    assert f32["decoder.token_embedding.weight"].dtype == torch.float32
    for name, tensor in f16.items():
        assert torch.equal(f32[name], tensor.float()), name  # float16 -> float32 is exact


def test_int8_model_is_refused(ct2_tiny_en: Path, tmp_path: Path, settings: Settings) -> None:
    ct2_int8 = write_ct2_model(ct2_tiny_en, tmp_path / "int8", "int8")
    with pytest.raises(EngineError, match=r"int8: only float16/float32"):
        convert_ct2_to_openai(ct2_int8, tmp_path / "int8.pt")
    assert not (tmp_path / "int8.pt").exists()
    settings.TRANSCRIBE = {"ENGINE": "openai-whisper", "MODEL_CACHE": str(tmp_path / "cache")}
    with pytest.raises(EngineError, match=r"TRANSCRIBE\['MODEL'\]"):
        OpenAIWhisperEngine.from_settings(str(ct2_int8), device="cpu", cpu_threads=0)


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "missing"],
)
def test_corrupt_model_bin_is_refused(ct2_tiny_en: Path, tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(ct2_tiny_en / "config.json", folder / "config.json")
    if damage == "truncated":
        with open(ct2_tiny_en / "model.bin", "rb") as src:
            (folder / "model.bin").write_bytes(src.read(3_000_000))
    elif damage == "garbage":
        (folder / "model.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        (folder / "model.bin").write_bytes(b"")
    with pytest.raises(EngineError):
        convert_ct2_to_openai(folder, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------- recognition


@pytest.mark.parametrize(
    ("clip", "max_wer"),
    [
        ("jfk.wav", 0.05),  # measured 0.0 at beam 1 and 5; 0.05 allows one word of 22
        ("librispeech_61-70968-0002.wav", 0.15),  # measured 0.0; 0.15 allows one word of 7
    ],
)
def test_transcribes_real_speech(
    openai_engine: OpenAIWhisperEngine, audio_dir: Path, refs: dict[str, str], clip: str, max_wer: float
) -> None:
    audio = load_wav(audio_dir / clip)
    result = openai_engine.transcribe_numpy(audio, "en")
    assert wer(refs[clip], result.text) <= max_wer, result.text
    assert result.language == "en"
    assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert all(s.text == s.text.strip() and s.text for s in result.segments)


def test_word_timestamps(openai_engine: OpenAIWhisperEngine, audio_dir: Path) -> None:
    audio = load_wav(audio_dir / "jfk.wav")
    duration = len(audio) / SAMPLE_RATE
    result = openai_engine.transcribe_numpy(audio, "en")
    words = result.words
    assert len(words) == 22
    for word in words:
        assert type(word.start) is float and type(word.end) is float and type(word.probability) is float
        assert word.text.strip()
        assert 0.0 <= word.start <= word.end <= duration
        assert 0.0 <= word.probability <= 1.0
    for before, after in zip(words, words[1:], strict=False):
        assert before.end <= after.start + 1e-6
    assert words[0].text == " And"  # the tokenizer's spelling, leading space kept (base.Word)
    for segment in result.segments:
        assert "".join(w.text for w in segment.words).strip() == segment.text
        assert type(segment.avg_logprob) is float and type(segment.no_speech_prob) is float
        assert segment.start <= segment.words[0].start and segment.words[-1].end <= segment.end + 1e-6
    no_words = openai_engine.transcribe_numpy(audio, "en", DecodeOptions(word_timestamps=False))
    assert no_words.words == [] and normalize(no_words.text) == normalize(result.text)


def test_agrees_with_faster_whisper(
    openai_engine: OpenAIWhisperEngine, faster_engine: FasterWhisperEngine, audio_dir: Path
) -> None:
    audio = load_wav(audio_dir / "jfk.wav")
    ours = openai_engine.transcribe_numpy(audio, "en")
    theirs = faster_engine.transcribe_numpy(audio, "en")
    # Measured: identical normalized text at beam 1 and 5 (WER 0.0 between them); a word of slack.
    assert wer(theirs.text, ours.text) <= 0.05, (ours.text, theirs.text)
    # With config.json's alignment heads the word times follow faster-whisper's closely: measured mean
    # |difference| 0.015 s on this clip (0.07 s with whisper's default heads, 0.10 s with all heads).
    assert [normalize(w.text) for w in ours.words] == [normalize(w.text) for w in theirs.words]
    diffs = [abs(a.start - b.start) for a, b in zip(ours.words, theirs.words, strict=True)]
    diffs += [abs(a.end - b.end) for a, b in zip(ours.words, theirs.words, strict=True)]
    assert float(np.mean(diffs)) < 0.04


def test_noise_gives_no_words(openai_engine: OpenAIWhisperEngine, audio_dir: Path) -> None:
    # Measured: no segments at beam 1 (1.7 s for the 20 s clip). Whisper's raw output at temperature 0
    # is ". . ." segments with no_speech_prob 0.9, which the engine drops as carrying no words.
    result = openai_engine.transcribe_numpy(load_wav(audio_dir / "silence_noise.wav"), "en")
    assert result.words == [] and result.text == ""


def test_silence_and_empty_audio(openai_engine: OpenAIWhisperEngine) -> None:
    assert openai_engine.transcribe_numpy(np.zeros(0, dtype=np.float32), "en").segments == ()
    assert openai_engine.transcribe_numpy(np.zeros(SAMPLE_RATE, dtype=np.float32), "en").words == []


def test_engine_protocol_and_options(openai_engine: OpenAIWhisperEngine, audio_dir: Path) -> None:
    assert isinstance(openai_engine, STTEngine)
    assert openai_engine.name == "openai-whisper" and openai_engine.model_name == "tiny.en"
    assert openai_engine.multilingual is False and openai_engine.supports_word_timestamps is True
    audio = load_wav(audio_dir / "librispeech_61-70968-0002.wav")
    # An English-only model always decodes English; beam search runs; options whisper lacks
    # (faster-whisper's vad_filter) are ignored, its own (patience) are passed on.
    result = openai_engine.transcribe_numpy(
        audio,
        "de",
        DecodeOptions(beam_size=5, prompt="Golden.", extra={"vad_filter": True, "patience": 1.0}),
    )
    assert result.language == "en"
    assert "golden fortune" in normalize(result.text)


# ---------------------------------------------------------------- settings


def test_from_settings_converts_once_into_the_cache(
    tmp_path: Path, settings: Settings, audio_dir: Path
) -> None:
    settings.TRANSCRIBE = {"ENGINE": "openai-whisper", "MODEL": "tiny.en", "MODEL_CACHE": str(tmp_path)}
    engine = OpenAIWhisperEngine.from_settings("tiny.en", device="cpu", cpu_threads=0)
    cached = tmp_path / "openai" / "tiny.en.pt"
    assert engine.checkpoint == cached and cached.is_file()
    assert default_checkpoint_path("tiny.en", tmp_path) == cached
    stamp = cached.stat().st_mtime_ns
    again = OpenAIWhisperEngine.from_settings("tiny.en", device="cpu", cpu_threads=0)
    assert again.checkpoint == cached and cached.stat().st_mtime_ns == stamp  # reused, not reconverted
    # A damaged cached conversion is rebuilt rather than failing the app.
    cached.write_bytes(b"not a checkpoint")
    rebuilt = OpenAIWhisperEngine.from_settings("tiny.en", device="cpu", cpu_threads=0)
    result = rebuilt.transcribe_numpy(load_wav(audio_dir / "librispeech_61-70968-0002.wav"), "en")
    assert normalize(result.text) == "a golden fortune and a happy life"


def test_from_settings_loads_a_pt_path_through_the_factory(openai_checkpoint: Path) -> None:
    from transcribe.engines import load_engine

    engine = load_engine("openai-whisper", str(openai_checkpoint), device="cpu", cpu_threads=0)
    assert isinstance(engine, OpenAIWhisperEngine) and engine.checkpoint == openai_checkpoint


def test_from_settings_errors_name_the_setting(tmp_path: Path, settings: Settings) -> None:
    settings.TRANSCRIBE = {"ENGINE": "openai-whisper", "MODEL_CACHE": str(tmp_path)}
    with pytest.raises(EngineError, match=r"TRANSCRIBE\['MODEL'\]"):
        OpenAIWhisperEngine.from_settings(str(tmp_path / "missing.pt"), device="cpu", cpu_threads=0)
    with pytest.raises(EngineError, match=r"TRANSCRIBE\['MODEL'\]"):
        OpenAIWhisperEngine.from_settings("no-such-model", device="cpu", cpu_threads=0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(EngineError, match=r"TRANSCRIBE\['MODEL'\]"):
        OpenAIWhisperEngine.from_settings(str(bad), device="cpu", cpu_threads=0)


def test_modules_do_not_import_torch_at_startup() -> None:
    code = (
        "import sys, django; django.setup(); before = set(sys.modules);"
        "import transcribe.engines.openai, transcribe.engines.convert;"
        "import transcribe.management.commands.transcribe_convert_model;"
        "new = set(sys.modules) - before;"
        "bad = sorted(m for m in new if m.split('.')[0] in ('torch', 'whisper'));"
        "assert not bad, bad"
    )
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
