"""The signed-in user's own transcripts (never anyone else's: other ids are 404)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.views.generic import DetailView, ListView

from .exports import DOWNLOADS, download_name, render, session_cues
from .models import TranscriptSession


class OwnSessionsMixin(LoginRequiredMixin):
    def get_queryset(self) -> QuerySet[TranscriptSession]:
        return TranscriptSession.objects.filter(owner=self.request.user)  # type: ignore[attr-defined]


class SessionListView(OwnSessionsMixin, ListView):  # type: ignore[type-arg]
    template_name = "transcribe/session_list.html"
    context_object_name = "sessions"
    paginate_by = 50


class SessionDetailView(OwnSessionsMixin, DetailView):  # type: ignore[type-arg]
    template_name = "transcribe/session_detail.html"
    context_object_name = "session"

    def get_queryset(self) -> QuerySet[TranscriptSession]:
        return super().get_queryset().prefetch_related("segments")


class SessionExportView(OwnSessionsMixin, DetailView):  # type: ignore[type-arg]
    """``sessions/<id>/export.<txt|srt|vtt|json>``: the transcript as a download."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            fmt, content_type = DOWNLOADS[kwargs["extension"]]
        except KeyError:
            raise Http404("Unknown export format") from None
        session = self.get_object()
        body = render(
            session_cues(session),
            fmt,
            session=str(session.pk),
            title=session.title,
            language=session.language,
        )
        response = HttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = (
            f'attachment; filename="{download_name(session, kwargs["extension"])}"'
        )
        return response
