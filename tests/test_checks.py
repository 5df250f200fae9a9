"""Tests of ``transcribe.checks.check_settings``: exact message IDs under ``override_settings``
(as django-cors-headers tests its checks), plus one run of the real ``check`` command."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from transcribe.checks import RANGES, check_settings
from transcribe.conf import DEFAULTS

DEV_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "transcribe",
]


def check_error_codes(expected: list[str]) -> None:
    errors = check_settings()
    assert sorted(e.id for e in errors) == sorted(expected), [e.msg for e in errors]
    for e in errors:
        assert e.msg and e.id.startswith("transcribe.")


# DEBUG=True keeps W001 (the in-memory layer of the test settings) out of the tests that are not about it.
pytestmark = pytest.mark.usefixtures("debug_on")


@pytest.fixture
def debug_on(settings):
    settings.DEBUG = True


@override_settings(TRANSCRIBE={})
def test_defaults_pass():
    check_error_codes([])


@override_settings(
    TRANSCRIBE={"MODEL": "base", "LANGUAGE": None, "MAX_SESSIONS": 4, "STEP": 1, "DEVICE": "auto"}
)
def test_valid_settings_pass():
    check_error_codes([])


def test_no_transcribe_setting_at_all(settings):
    del settings.TRANSCRIBE
    check_error_codes([])


@override_settings(TRANSCRIBE={"MODLE": "tiny.en", "workers": 2})
def test_e001_unknown_keys():
    check_error_codes(["transcribe.E001", "transcribe.E001"])
    assert "MODLE" in check_settings()[0].msg and "MODEL" in check_settings()[0].hint


@pytest.mark.parametrize(
    "engine", ["faster-whisper", "openai-whisper", "transcribe.engines.faster.FasterWhisperEngine"]
)
def test_e002_known_engines_pass(engine):
    with override_settings(TRANSCRIBE={"ENGINE": engine}):
        check_error_codes([])


@pytest.mark.parametrize("engine", ["whisper-cpp", "nodots", "transcribe.engines.nope.Engine", ""])
def test_e002_unknown_engine(engine):
    with override_settings(TRANSCRIBE={"ENGINE": engine}):
        check_error_codes(["transcribe.E002"])


@override_settings(TRANSCRIBE={"ENGINE": "missing_pkg.engines.Engine"})
def test_e002_engine_in_a_missing_package():
    """Regression: find_spec('missing_pkg.engines') imports the parent package, and its
    ModuleNotFoundError crashed the check instead of giving E002.
    """
    check_error_codes(["transcribe.E002"])


@override_settings(TRANSCRIBE={"ENGINE": {"BACKEND": "transcribe.engines.faster.FasterWhisperEngine"}})
def test_e002_engine_of_the_wrong_type():
    """Regression: a dict ENGINE (the {'BACKEND': ..., 'OPTIONS': ...} shape of STYLE.md) raised
    TypeError (unhashable) instead of giving E002.
    """
    check_error_codes(["transcribe.E002"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WORKERS", 0),
        ("WORKERS", 65),
        ("WORKERS", "2"),
        ("WORKERS", True),  # a bool is not a number here
        ("WORKERS", None),
        ("MAX_UTTERANCE", 30),
        ("MAX_UTTERANCE", 1.5),
        ("VAD_THRESHOLD", 1.0),
        ("STEP", 0),
        ("MAX_FRAME_BYTES", 100),
        ("BEAM_SIZE", 0),
        ("STATUS_INTERVAL", -1),
    ],
)
def test_e003_out_of_range(key, value):
    with override_settings(TRANSCRIBE={key: value}):
        check_error_codes(["transcribe.E003"])
        assert key in check_settings()[0].msg


@pytest.mark.parametrize("key", sorted(RANGES))
def test_e003_bounds_are_inclusive(key):
    low, high = RANGES[key]
    for value in (low, high):
        with override_settings(TRANSCRIBE={key: value}):
            check_error_codes([])


def test_every_range_names_a_documented_setting():
    assert set(RANGES) <= set(DEFAULTS)


@override_settings(TRANSCRIBE={"WORKERS": 0, "STEP": 100, "BOGUS": 1})
def test_several_errors_are_all_reported():
    check_error_codes(["transcribe.E001", "transcribe.E003", "transcribe.E003"])


@override_settings(INSTALLED_APPS=[a for a in APPS if a != "daphne"])
def test_e004_daphne_missing():
    check_error_codes(["transcribe.E004"])


@override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "daphne", "transcribe"])
def test_e004_daphne_after_staticfiles():
    check_error_codes(["transcribe.E004"])


@override_settings(INSTALLED_APPS=["daphne", "transcribe"])
def test_e004_daphne_without_staticfiles_is_fine():
    check_error_codes([])


@pytest.mark.parametrize(
    "overrides",
    [
        {"LANGUAGE": "e"},
        {"LANGUAGE": 12},
        {"LANGUAGE": "a-very-long-language"},
        {"DEVICE": "gpu"},
        {"INFERENCE": "remote"},
        {"VAD_RUNTIME": "torch"},
        {"INFERENCE": "channels"},  # remote workers: not available yet
    ],
)
def test_e005_invalid_values(overrides):
    with override_settings(TRANSCRIBE=overrides):
        check_error_codes(["transcribe.E005"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"LANGUAGE": None},
        {"LANGUAGE": "en"},
        {"LANGUAGE": "zh-Hant"},
        {"DEVICE": "cuda"},
        {"VAD_RUNTIME": "onnxruntime"},
    ],
)
def test_e005_valid_values(overrides):
    with override_settings(TRANSCRIBE=overrides):
        check_error_codes([])


@override_settings(DEBUG=False, CHANNEL_LAYERS=DEV_LAYERS)
def test_w001_in_memory_layer_in_production():
    check_error_codes(["transcribe.W001"])
    assert check_settings()[0].level < 40  # a warning, not an error


@override_settings(DEBUG=True, CHANNEL_LAYERS=DEV_LAYERS)
def test_w001_not_in_debug():
    check_error_codes([])


@override_settings(
    DEBUG=False, CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
)
def test_w001_not_with_redis():
    check_error_codes([])


@override_settings(DEBUG=False, CHANNEL_LAYERS={})
def test_w001_no_layers():
    check_error_codes([])


# -- registration -----------------------------------------------------------------------------


def test_check_command_passes_with_the_test_settings(capsys):
    call_command("check")  # transcribe.W001 is silenced in tests/settings.py
    assert "no issues" in capsys.readouterr().out


@override_settings(TRANSCRIBE={"MAX_UTTERANCE": 60})
def test_check_command_runs_the_check():
    with pytest.raises(SystemCheckError, match=r"transcribe\.E003"):
        call_command("check")


@override_settings(DEBUG=False, SILENCED_SYSTEM_CHECKS=[])
def test_check_command_reports_w001_unless_silenced(capsys):
    call_command("check")  # warnings do not fail the command
    assert "transcribe.W001" in capsys.readouterr().err
