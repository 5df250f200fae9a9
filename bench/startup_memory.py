"""Resident memory of a server that is ready for its first session: ours against two baselines.

    python bench/startup_memory.py [--repeat 3] [--verbose]

Each configuration runs in a fresh interpreter that does what ``python -m daphne project.asgi:application``
does before the first session arrives: import daphne's server, start Django (the app's ``ready()``),
load the VAD and the engine, and decode jfk.wav three times (beam 5, word timestamps, as a final),
then reads its RSS and whether
FFmpeg's libavcodec is mapped into it:

- baseline: PyAV (FFmpeg's libraries) imported before Django starts, as faster-whisper's own import
  does when nothing defers it (for ``decode_audio``, which the app never calls); the rest in the
  same order as ours, so the app's start-up settings (``transcribe.heap``) apply to both alike;
- vad_onnxruntime: the shipped start-up, but the Silero VAD on onnxruntime
  (``VAD_RUNTIME="onnxruntime"``) instead of numpy;
- ours: the shipped start-up, where ``transcribe.lazy_imports.defer_unused`` lets ``import av``
  return a module that loads on first use, and the VAD runs on numpy.

Prints one JSON line with the median RSS of ``--repeat`` runs per configuration and the ratios
baseline / ours and vad_onnxruntime / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO") or ROOT.parent / "shared" / "audio")
CONFIGS = ("baseline", "vad_onnxruntime", "ours")


def child(config: str) -> dict[str, Any]:
    """Runs in its own interpreter (see main)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import daphne.server  # noqa: F401  (the server imports it before the application)

    if config == "baseline":
        import av  # noqa: F401  (what faster-whisper's own import does when nothing defers it)

    import django

    django.setup()
    from tests.conftest import load_wav
    from transcribe.engines import DecodeOptions, get_engine
    from transcribe.streaming.vad import StreamingVAD

    speech = load_wav(AUDIO / "jfk.wav")
    StreamingVAD("onnxruntime" if config == "vad_onnxruntime" else "numpy").process(speech)
    for _ in range(3):  # RSS settles after the first few decodes (the first alone is bimodal)
        get_engine().transcribe_numpy(speech, "en", DecodeOptions(beam_size=5, word_timestamps=True))
    # Read here rather than through _harness.ProcessTree: importing the harness (and the client it
    # imports) into the measured process would add to what is measured.
    maps = Path("/proc/self/maps").read_text()
    status = Path("/proc/self/status").read_text().splitlines()
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"rss_mib": round(rss_kib / 1024, 1), "libavcodec_mapped": "libavcodec" in maps}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per configuration")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    runs: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    for _ in range(args.repeat):
        for config in CONFIGS:  # alternating, so that drift on the box falls on both
            out = subprocess.run(
                [sys.executable, __file__, "--child", config], capture_output=True, text=True, check=True
            )
            runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {
        config: {
            "rss_mib": statistics.median(r["rss_mib"] for r in rows),
            "rss_mib_runs": [r["rss_mib"] for r in rows],
            "libavcodec_mapped": all(r["libavcodec_mapped"] for r in rows),
        }
        for config, rows in runs.items()
    }
    base, ours = results["baseline"]["rss_mib"], results["ours"]["rss_mib"]
    vad = results["vad_onnxruntime"]["rss_mib"]
    if args.verbose:
        for config, row in results.items():
            print(
                f"{config:<15} RSS {row['rss_mib']:.1f} MiB {row['rss_mib_runs']} "
                f"libavcodec mapped: {row['libavcodec_mapped']}",
                file=sys.stderr,
            )
    print(
        json.dumps(
            {
                "bench": "startup_memory",
                **results,
                "saved_mib": round(base - ours, 1),
                "ratio_baseline_over_ours": round(base / ours, 3),
                "vad_saved_mib": round(vad - ours, 1),
                "ratio_vad_onnxruntime_over_ours": round(vad / ours, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
