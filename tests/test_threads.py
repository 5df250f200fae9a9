"""numpy's BLAS is capped when the app starts (transcribe/threads.py), unless the operator chose."""

from __future__ import annotations

import os

import pytest
from threadpoolctl import threadpool_info

from transcribe.conf import transcribe_settings
from transcribe.threads import THREAD_ENVIRONMENT, limit_blas_threads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture(autouse=True)
def restore_the_default():
    yield
    limit_blas_threads(int(transcribe_settings.BLAS_THREADS))


@pytest.mark.skipif(
    any(name in os.environ for name in THREAD_ENVIRONMENT),
    reason="the environment sets a thread count, which the app leaves alone",
)
def test_the_app_capped_blas_when_it_started():
    assert transcribe_settings.BLAS_THREADS == 1
    assert blas_threads() == {1}  # numpy's OpenBLAS found and capped; this box has 2 cores


def test_another_cap_applies_at_once():
    assert limit_blas_threads(2) is True
    assert blas_threads() == {2}


@pytest.mark.parametrize("variable", THREAD_ENVIRONMENT)
def test_a_thread_count_in_the_environment_is_left_alone(monkeypatch, variable):
    limit_blas_threads(2)
    monkeypatch.setenv(variable, "4")
    assert limit_blas_threads(1) is False
    assert blas_threads() == {2}


def test_zero_leaves_blas_alone():
    limit_blas_threads(2)
    assert limit_blas_threads(0) is False
    assert blas_threads() == {2}
