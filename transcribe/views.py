"""The signed-in user's own transcripts (never anyone else's: other ids are 404)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.contrib.messages.views import SuccessMessageMixin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import get_object_or_404
from django.urls import reverse, reverse_lazy
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django.views.generic import DeleteView, DetailView, ListView, TemplateView, UpdateView

from .auth import token_from_header
from .conf import transcribe_settings
from .exports import DOWNLOADS, download_name, render, session_cues
from .forms import SessionTitleForm
from .http import ranged_file_response
from .models import ApiToken, TranscriptSession
from .tickets import issue_ticket, origin_allowed


def clock(seconds: float) -> str:
    """A duration as a clock reads it: ``m:ss`` under an hour, ``h:mm:ss`` from then on."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Whisper's most common languages first; a multilingual model understands about a hundred.
LANGUAGES = [
    ("en", "English"),
    ("", "Detect automatically"),
    ("de", "German"),
    ("es", "Spanish"),
    ("fr", "French"),
    ("it", "Italian"),
    ("ja", "Japanese"),
    ("nl", "Dutch"),
    ("pl", "Polish"),
    ("pt", "Portuguese"),
    ("ru", "Russian"),
    ("zh", "Chinese"),
]
CAPTURE_MODES = ("auto", "worklet", "mediarecorder")


class RecordView(LoginRequiredMixin, TemplateView):
    """The recording page. ``?capture=mediarecorder`` forces the WebM/Opus path (tests, old browsers)."""

    template_name = "transcribe/record.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        model = str(transcribe_settings.MODEL)
        english_only = model.endswith(".en")
        capture = self.request.GET.get("capture", "auto")
        return super().get_context_data(
            websocket_url=transcribe_settings.WEBSOCKET_URL,
            languages=LANGUAGES[:1] if english_only else LANGUAGES,
            language=transcribe_settings.LANGUAGE or "",
            english_only=english_only,
            model=model,
            capture=capture if capture in CAPTURE_MODES else "auto",
            **kwargs,
        )


class OwnSessionsMixin(LoginRequiredMixin):
    def get_queryset(self) -> QuerySet[TranscriptSession]:
        return TranscriptSession.objects.filter(owner=self.request.user)  # type: ignore[attr-defined]


class SessionListView(OwnSessionsMixin, ListView):  # type: ignore[type-arg]
    template_name = "transcribe/session_list.html"
    context_object_name = "sessions"
    paginate_by = 50

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["rows"] = [(session, clock(session.duration)) for session in context["sessions"]]
        return context


class SessionDetailView(OwnSessionsMixin, DetailView):  # type: ignore[type-arg]
    template_name = "transcribe/session_detail.html"
    context_object_name = "session"

    def get_queryset(self) -> QuerySet[TranscriptSession]:
        return super().get_queryset().prefetch_related("segments")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["duration"] = clock(self.object.duration)
        context["rename_form"] = SessionTitleForm(instance=self.object)
        return context


class SessionRenameView(OwnSessionsMixin, SuccessMessageMixin, UpdateView):  # type: ignore[type-arg]
    """``sessions/<id>/rename/``: the detail page posts here; GET (or an invalid title) shows the form alone."""

    form_class = SessionTitleForm
    template_name = "transcribe/session_rename.html"
    context_object_name = "session"
    success_message = "Renamed."

    def get_success_url(self) -> str:
        return reverse("transcribe:session-detail", args=[self.object.pk])


class SessionDeleteView(OwnSessionsMixin, SuccessMessageMixin, DeleteView):  # type: ignore[type-arg]
    """``sessions/<id>/delete/``: GET asks, POST deletes the session, its segments and its recording."""

    template_name = "transcribe/session_confirm_delete.html"
    context_object_name = "session"
    success_url = reverse_lazy("transcribe:session-list")

    def get_success_message(self, cleaned_data: dict[str, Any]) -> str:
        # The row is gone by now, but the instance still names it.
        return f"Deleted “{self.object}”."


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


class SessionAudioView(LoginRequiredMixin, View):
    """``sessions/<id>/audio.ogg``: the kept recording, for its owner and for staff who may view
    sessions (the admin's player). Never served from a public media URL."""

    def get(self, request: HttpRequest, pk: Any) -> HttpResponse:
        user = request.user
        sessions = TranscriptSession.objects.exclude(audio="")
        may_review = user.has_perm("transcribe.view_transcriptsession") or user.has_perm(
            "transcribe.change_transcriptsession"
        )
        if not (user.is_staff and may_review):
            sessions = sessions.filter(owner=user)  # type: ignore[misc]
        session = get_object_or_404(sessions, pk=pk)
        return ranged_file_response(request, session.audio, "audio/ogg", download_name(session, "ogg"))


def _posted(request: HttpRequest, name: str) -> str:
    """A form field, or a key of a JSON object body; "" when missing or not a string."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body)
        except ValueError:
            data = None
        value = data.get(name) if isinstance(data, dict) else None
    else:
        value = request.POST.get(name)
    return value if isinstance(value, str) else ""


@csrf_exempt  # checked below, unless a valid API token authenticates the request
@never_cache
@require_POST
def ticket(request: HttpRequest) -> HttpResponse:
    """``tickets/``: a short-lived ticket for opening the socket from ``origin`` (``transcribe.tickets``).

    The other site's backend calls it with ``Authorization: Token <key>``: no CSRF check, since a
    browser never adds that header by itself. A signed-in browser may call it with its session,
    and then the CSRF token is required as for any other post.
    """
    key = token_from_header(request.headers.get("Authorization", ""))
    if key:
        user = ApiToken.user_for(key)  # a presented token decides, never the cookie
    elif request.user.is_authenticated:
        refused = CsrfViewMiddleware(lambda request: HttpResponse()).process_view(request, None, (), {})
        if refused is not None:
            return refused
        user = request.user
    else:
        user = None
    if user is None:
        return JsonResponse({"error": "Sign in, or send Authorization: Token <key>."}, status=401)
    origin = _posted(request, "origin")
    if not origin:
        return JsonResponse({"error": "Say which origin the ticket is for: origin=https://…"}, status=400)
    if not origin_allowed(origin):
        return JsonResponse(
            {"error": f"{origin} may not open the socket: it is not in TRANSCRIBE['TICKET_ORIGINS']."},
            status=400,
        )
    seconds = transcribe_settings.TICKET_SECONDS
    return JsonResponse({"ticket": issue_ticket(user, origin), "expires_in": seconds, "origin": origin})
