"""The review screens: staff find transcripts, correct them, export them and sign them off.

Reviewers correct a segment by filling in its ``edited_text``; the engine's ``text`` and the timings stay
as recorded. Exports are built here rather than by linking to ``transcribe:session-export``, which only
ever serves a session to its owner.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Prefetch, QuerySet
from django.forms import Textarea
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .exports import DOWNLOADS, Cue, download_name, render
from .models import ApiToken, TranscriptSegment, TranscriptSession

# Extension -> the label of its export action and download link.
EXPORT_LABELS = {"txt": "TXT", "srt": "SRT", "vtt": "WebVTT", "json": "JSON"}


def hms(seconds: float) -> str:
    """A duration as ``h:mm:ss``, whole seconds."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def timestamp(seconds: float) -> str:
    """A position in the recording as ``h:mm:ss.mmm``, to find a segment with the player."""
    millis = max(0, round(seconds * 1000))
    secs, millis = divmod(millis, 1000)
    return f"{hms(secs)}.{millis:03d}"


def export_file(session: TranscriptSession, extension: str) -> str:
    """What ``transcribe:session-export`` serves, from segments prefetched in ``seq`` order.

    ``exports.session_cues`` queries each session's segments itself; going through the prefetch
    instead keeps a ZIP of many sessions at two queries. Edited text wins, as there.
    """
    fmt = DOWNLOADS[extension][0]
    cues = [Cue(seg.start, seg.end, seg.display_text) for seg in session.segments.all()]
    return render(cues, fmt, session=str(session.pk), title=session.title, language=session.language)


def with_segments(sessions: QuerySet[TranscriptSession]) -> QuerySet[TranscriptSession]:
    return sessions.prefetch_related(Prefetch("segments", queryset=TranscriptSegment.objects.order_by("seq")))


class ReviewedFilter(admin.SimpleListFilter):
    title = _("reviewed")
    parameter_name = "reviewed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(reviewed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(reviewed_at__isnull=True)
        return queryset


class TranscriptSegmentInline(admin.TabularInline):
    """Every segment of the session; only ``edited_text`` is a form field, so rendering 500 segments
    costs the one query that loads them."""

    model = TranscriptSegment
    fields = ("seq", "starts", "ends", "text", "edited_text")
    readonly_fields = ("seq", "starts", "ends", "text")
    extra = 0
    can_delete = False
    formfield_overrides = {models.TextField: {"widget": Textarea(attrs={"rows": 2, "cols": 60})}}

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Segments come from the engine; a reviewer corrects them but never invents one.
        return False

    @admin.display(description=_("start"))
    def starts(self, segment: TranscriptSegment) -> str:
        return timestamp(segment.start)

    @admin.display(description=_("end"))
    def ends(self, segment: TranscriptSegment) -> str:
        return timestamp(segment.end)


@admin.register(TranscriptSession)
class TranscriptSessionAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "owner",
        "status",
        "language",
        "duration_hms",
        "word_count",
        "started_at",
        "reviewed",
    )
    list_filter = (
        ("owner", admin.RelatedOnlyFieldListFilter),
        "status",
        "language",
        "started_at",
        ReviewedFilter,
    )
    list_select_related = ("owner",)
    date_hierarchy = "started_at"
    search_fields = ("title", "owner__username", "segments__text", "segments__edited_text")
    search_help_text = _("Title, owner's username, or words of the transcript (as heard or as corrected).")
    fieldsets = (
        (None, {"fields": ("title", "owner", "status", "language", "audio_player", "downloads")}),
        (
            _("Recording"),
            {
                "fields": (
                    "id",
                    "started_at",
                    "ended_at",
                    "duration_hms",
                    "word_count",
                    "engine",
                    "model_name",
                    "audio_format",
                    "client_info",
                )
            },
        ),
        (_("Review"), {"fields": ("reviewed_at", "reviewed_by")}),
    )
    readonly_fields = (
        "owner",
        "audio_player",
        "downloads",
        "id",
        "started_at",
        "ended_at",
        "duration_hms",
        "word_count",
        "engine",
        "model_name",
        "audio_format",
        "client_info",
        "reviewed_at",
        "reviewed_by",
    )
    inlines = [TranscriptSegmentInline]
    actions = ["export_txt", "export_srt", "export_vtt", "export_json", "mark_reviewed", "mark_not_reviewed"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Sessions are recordings; one typed in by hand would have neither audio nor timings.
        return False

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: TranscriptSession | None = None,
    ) -> HttpResponse:
        # A long session posts three fields per segment. Past DATA_UPLOAD_MAX_NUMBER_FIELDS Django
        # answers the save with a bare 400 and the reviewer's corrections are lost, so say so up front.
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        if limit is not None and change and self.has_change_permission(request, obj):
            posted = len(context["adminform"].form.fields) + 3  # + the CSRF token and the save buttons
            for inline in context["inline_admin_formsets"]:
                posted += 4 + sum(len(form.fields) for form in inline.formset.forms)  # + management form
            if posted > limit:
                self.message_user(
                    request,
                    _(
                        "This session is too long to save here: the form has %(posted)d fields and "
                        "DATA_UPLOAD_MAX_NUMBER_FIELDS allows %(limit)d. Raise that setting before "
                        "correcting segments."
                    )
                    % {"posted": posted, "limit": limit},
                    messages.WARNING,
                )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # Columns and read-only fields.

    @admin.display(description=_("duration"), ordering="duration")
    def duration_hms(self, session: TranscriptSession) -> str:
        return hms(session.duration)

    @admin.display(description=_("reviewed"), boolean=True, ordering="reviewed_at")
    def reviewed(self, session: TranscriptSession) -> bool:
        return session.reviewed_at is not None

    @admin.display(description=_("recording"))
    def audio_player(self, session: TranscriptSession) -> str:
        if not session.audio:
            return _("No audio kept")
        # Served by the app's own view (staff with view permission may play it), never from MEDIA_URL.
        return format_html(
            '<audio controls preload="metadata" src="{}"></audio>',
            reverse("transcribe:session-audio", args=[session.pk]),
        )

    @admin.display(description=_("download"))
    def downloads(self, session: TranscriptSession) -> SafeString:
        return format_html_join(
            " · ",
            '<a href="{}" download>{}</a>',
            ((self.export_url(session, ext), label) for ext, label in EXPORT_LABELS.items()),
        )

    # Exports.

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        urls = [
            path(
                "<uuid:object_id>/export.<str:extension>/",
                self.admin_site.admin_view(self.export_view),
                name="{}_{}_export".format(*info),
            )
        ]
        # Before the defaults: their catch-all "<path:object_id>/" would swallow ".../export.txt/".
        return urls + super().get_urls()

    def export_url(self, session: TranscriptSession, extension: str) -> str:
        info = self.admin_site.name, self.opts.app_label, self.opts.model_name
        return reverse("{}:{}_{}_export".format(*info), args=[session.pk, extension])

    def export_view(self, request: HttpRequest, object_id: Any, extension: str) -> HttpResponse:
        if extension not in DOWNLOADS:
            raise Http404(_("Unknown export format"))
        if not self.has_view_permission(request):
            raise PermissionDenied
        session = with_segments(self.get_queryset(request)).filter(pk=object_id).first()
        if session is None:
            raise Http404(_("No such transcript session"))
        if not self.has_view_permission(request, session):
            raise PermissionDenied
        return self.download([session], extension)

    def download(self, sessions: Iterable[TranscriptSession], extension: str) -> HttpResponse:
        """One session's file, or a ZIP of one file per session when there are several."""
        files: dict[str, str] = {}
        for session in sessions:
            name = download_name(session, extension)
            stem, n = name.removesuffix(f".{extension}"), 1
            while name in files:  # Same title, or none: number the later ones.
                n += 1
                name = f"{stem}-{n}.{extension}"
            files[name] = export_file(session, extension)
        if len(files) == 1:
            [(name, body)] = files.items()
            response = HttpResponse(body, content_type=DOWNLOADS[extension][1])
        else:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for member, body in files.items():
                    archive.writestr(member, body)
            name = f"transcripts-{extension}.zip"
            response = HttpResponse(buffer.getvalue(), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def export_selected(self, queryset: QuerySet[TranscriptSession], extension: str) -> HttpResponse:
        return self.download(with_segments(queryset), extension)

    @admin.action(description=_("Export selected as TXT"), permissions=["view"])
    def export_txt(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> HttpResponse:
        return self.export_selected(queryset, "txt")

    @admin.action(description=_("Export selected as SRT"), permissions=["view"])
    def export_srt(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> HttpResponse:
        return self.export_selected(queryset, "srt")

    @admin.action(description=_("Export selected as WebVTT"), permissions=["view"])
    def export_vtt(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> HttpResponse:
        return self.export_selected(queryset, "vtt")

    @admin.action(description=_("Export selected as JSON"), permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> HttpResponse:
        return self.export_selected(queryset, "json")

    # Review.

    @admin.action(description=_("Mark as reviewed"), permissions=["change"])
    def mark_reviewed(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> None:
        count = queryset.update(reviewed_at=timezone.now(), reviewed_by=request.user)
        self.message_user(
            request,
            ngettext("%(count)d session marked as reviewed.", "%(count)d sessions marked as reviewed.", count)
            % {"count": count},
            messages.SUCCESS,
        )

    @admin.action(description=_("Mark as not reviewed"), permissions=["change"])
    def mark_not_reviewed(self, request: HttpRequest, queryset: QuerySet[TranscriptSession]) -> None:
        count = queryset.update(reviewed_at=None, reviewed_by=None)
        self.message_user(
            request,
            ngettext(
                "%(count)d session marked as not reviewed.",
                "%(count)d sessions marked as not reviewed.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here or by ``transcribe_token``; only a digest is kept, so the key is shown
    once, in the message after adding it. Revoke by deleting."""

    list_display = ("user", "prefix", "created_at")
    search_fields = ("user__username", "prefix")
    raw_id_fields = ("user",)
    fields = ("user",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a token is made or revoked, never edited

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.key:
            self.message_user(
                request,
                f"The key for {obj.user}: {obj.key} — copy it now, it is stored hashed and will not be shown again.",
                messages.WARNING,
            )
