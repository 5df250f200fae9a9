"""Shared fixtures: the real speech clips, their reference texts, and WER."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO = ROOT.parent / "shared" / "audio"


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """The folder of real recordings with refs.json: TRANSCRIBE_TEST_AUDIO, by default ../shared/audio.

    Recognition is only ever tested on real speech, never on audio committed to this repository.
    """
    folder = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO") or DEFAULT_AUDIO)
    if not (folder / "refs.json").is_file():
        pytest.skip(
            f"No test audio at {folder}: set TRANSCRIBE_TEST_AUDIO to a folder with refs.json and WAV clips"
        )
    return folder


@pytest.fixture(scope="session")
def refs(audio_dir: Path) -> dict[str, str]:
    """Reference transcripts by file name."""
    return {name: entry["text"] for name, entry in json.loads((audio_dir / "refs.json").read_text()).items()}


def load_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def run_python(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter at the repository's root (what a process has imported
    can only be seen in one that nothing else ran in); its last line of output, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def normalize(text: str) -> str:
    """Whisper's English normalizer where installed (numbers, spellings), else lower case without punctuation."""
    try:
        from whisper.normalizers import EnglishTextNormalizer
    except ImportError:
        pass
    else:
        return " ".join(EnglishTextNormalizer()(text).split())
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return float(len(hyp.split()))
    return float(jiwer.wer(ref, hyp))


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """WER over all words of all clips (not the mean of per-clip WERs)."""
    import jiwer

    refs = [normalize(r) for r, _ in pairs if normalize(r)]
    hyps = [normalize(h) for r, h in pairs if normalize(r)]
    return float(jiwer.wer(refs, hyps))


def word_errors(reference: str, hypothesis: str) -> list[str]:
    """Each run of wrong words as "reference -> hypothesis" ("-" for none), in order: what a WER
    figure is made of ("my -> am i", "woodcutters -> wood cutters")."""
    import jiwer

    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if not ref or not hyp:
        return [f"{' '.join(ref) or '-'} -> {' '.join(hyp) or '-'}"] if ref or hyp else []
    errors: list[str] = []
    run: list[int] | None = None  # [ref_start, ref_end, hyp_start, hyp_end] of the current run
    for chunk in [*jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0], None]:
        if chunk is not None and chunk.type != "equal":
            if run is None:
                run = [chunk.ref_start_idx, chunk.ref_end_idx, chunk.hyp_start_idx, chunk.hyp_end_idx]
            run[1], run[3] = chunk.ref_end_idx, chunk.hyp_end_idx
            continue
        if run is not None:
            said, heard = " ".join(ref[run[0] : run[1]]), " ".join(hyp[run[2] : run[3]])
            errors.append(f"{said or '-'} -> {heard or '-'}")
            run = None
    return errors


@pytest.fixture(autouse=True)
def forget_connections() -> Iterator[None]:
    """Consumers register themselves in class-level sets (MAX_SESSIONS, resume); a test that leaves
    a communicator open must not count against the next test's user."""
    yield
    from transcribe.consumers import TranscribeConsumer

    for task in TranscribeConsumer.expiring.values():
        task.cancel()
    TranscribeConsumer.expiring.clear()
    TranscribeConsumer.active.clear()
    TranscribeConsumer.live_sessions.clear()


def children() -> set[int]:
    """PIDs of this process's live or unreaped children, from every thread's /proc entry."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            pids.update(int(p) for p in (task / "children").read_text().split())
    return pids
