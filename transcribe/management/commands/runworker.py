"""``runworker``: Channels' command, with ``transcribe-inference`` read one job at a time.

``python manage.py runworker transcribe-inference`` starts a remote inference worker
(``TRANSCRIBE["INFERENCE"] = "channels"``); other channel names behave as in Channels.
"""

from __future__ import annotations

from channels.management.commands.runworker import Command as ChannelsRunworker

from transcribe.workers import InferenceWorkerServer


class Command(ChannelsRunworker):
    help = "Run a Channels worker; `runworker transcribe-inference` serves remote inference jobs."
    worker_class = InferenceWorkerServer
