"""``transcribe.lazy_imports``: PyAV stays unloaded until something uses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_python
from transcribe import lazy_imports

# The engine's imports in a fresh process with the app started, then faster-whisper's file decoder.
ENGINE_IMPORTS = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()  # the app's ready() defers PyAV
import faster_whisper
from transcribe.streaming.vad import StreamingVAD

def mapped(library):
    return library in open("/proc/self/maps").read()

before = mapped("libavcodec")
samples = faster_whisper.decode_audio(sys.argv[1])
print(json.dumps({"mapped_before_use": before, "mapped_after_use": mapped("libavcodec"),
                  "samples": len(samples)}))
"""


def test_the_app_keeps_pyav_unloaded_until_faster_whisper_decodes_a_file(audio_dir: Path) -> None:
    result = run_python(ENGINE_IMPORTS, str(audio_dir / "jfk.wav"))
    assert result["mapped_before_use"] is False  # imported by faster-whisper, not loaded
    assert result["mapped_after_use"] is True  # loaded on first use, and it worked:
    assert result["samples"] == pytest.approx(11.0 * 16_000, abs=16_000)  # jfk.wav is 11 s


def test_a_deferred_module_runs_on_first_attribute_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "heavy_for_test.py").write_text(
        "import sys\nsys.modules['heavy_for_test_ran'] = sys\nVALUE = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # the finder goes away afterwards
    names = frozenset({"heavy_for_test"})
    assert lazy_imports.defer_unused(names) is True
    assert lazy_imports.defer_unused(names) is True  # idempotent: one finder
    assert sum(isinstance(f, lazy_imports.LazyFinder) and f.names == names for f in sys.meta_path) == 1
    try:
        import heavy_for_test  # type: ignore[import-not-found]

        assert "heavy_for_test_ran" not in sys.modules
        assert heavy_for_test.VALUE == 42
        assert "heavy_for_test_ran" in sys.modules
    finally:
        for name in ("heavy_for_test", "heavy_for_test_ran"):
            sys.modules.pop(name, None)


def test_defer_unused_is_too_late_for_a_loaded_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    before = list(sys.meta_path)
    assert lazy_imports.defer_unused(frozenset({"json"})) is False  # imported above
    assert sys.meta_path == before
    assert json.dumps([1]) == "[1]"


def test_a_deferred_name_that_is_not_installed_fails_to_import_as_usual(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    assert lazy_imports.defer_unused(frozenset({"no_such_module_here"})) is True
    with pytest.raises(ModuleNotFoundError):
        import no_such_module_here  # type: ignore[import-not-found]  # noqa: F401
