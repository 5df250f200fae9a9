"""The streaming pipeline: one ``OptimizedRealtimeSTT`` per session."""

from .realtime import OptimizedRealtimeSTT, RealtimeSTT, StreamingConfig
from .scheduler import InferenceScheduler

__all__ = ["InferenceScheduler", "OptimizedRealtimeSTT", "RealtimeSTT", "StreamingConfig"]
