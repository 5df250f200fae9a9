"""The signed-in user's own transcripts (never anyone else's: other ids are 404)."""

from __future__ import annotations

from django.contrib.auth.mixins import LoginRequiredMixin
from django.db.models import QuerySet
from django.views.generic import DetailView, ListView

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
