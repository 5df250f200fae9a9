"""Audio in: decoding (ffmpeg through pipes, or none for raw PCM) and the ring buffer."""

from .buffer import OptimizedAudioBuffer
from .decoder import FORMATS, AsyncAudioDecoder, PcmDecoder, StreamingDecoder, make_decoder
from .ffmpeg import find_ffmpeg

__all__ = [
    "FORMATS",
    "AsyncAudioDecoder",
    "OptimizedAudioBuffer",
    "PcmDecoder",
    "StreamingDecoder",
    "find_ffmpeg",
    "make_decoder",
]
