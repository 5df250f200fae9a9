"""Fixtures and probes of the security suite: two users, and what this process holds (children, fds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tests.conftest import children
from transcribe.consumers import TranscribeConsumer

__all__ = ["children"]


@pytest.fixture(autouse=True)
async def no_session_left_behind() -> AsyncIterator[None]:
    """Dropped sessions drain and schedule their abort on this test's event loop, which ends with
    the test: let the drains finish (their ffmpeg is reaped there), then cancel the aborts."""
    yield
    if TranscribeConsumer.draining:
        await asyncio.wait(set(TranscribeConsumer.draining), timeout=60)
    for task in TranscribeConsumer.expiring.values():
        task.cancel()
    TranscribeConsumer.expiring.clear()


@pytest.fixture
def alice() -> Any:
    return get_user_model().objects.create_user("alice", password="pw-alice")


@pytest.fixture
def bob() -> Any:
    return get_user_model().objects.create_user("bob", password="pw-bob")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temp dir that Python (tempfile: the recorder's spool files) and ffmpeg (TMPDIR) use,
    so a temp file left behind shows up here; a listing of the shared /tmp would race others."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def zombies() -> set[int]:
    """Children that exited but were never waited for."""
    found = set()
    for pid in children():
        with contextlib.suppress(FileNotFoundError):
            # The state follows the parenthesised command name, which may itself hold spaces.
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                found.add(pid)
    return found


def open_fds() -> dict[int, str]:
    """This process's file descriptors and what they point at."""
    fds = {}
    for entry in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the listing's own fd, closed by now
            fds[int(entry.name)] = os.readlink(entry)
    return fds


async def settled_children(before: set[int], timeout: float = 10.0) -> set[int]:
    """Children started since ``before`` that are still there after up to ``timeout`` seconds
    (asyncio's child watcher reaps an exited ffmpeg from a thread, a moment after it exits)."""
    deadline = asyncio.get_running_loop().time() + timeout
    extra = children() - before
    while extra and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)  # noqa: ASYNC110 - nothing to wait on: the kernel reaps
        extra = children() - before
    return extra
