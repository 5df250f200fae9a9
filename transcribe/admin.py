from __future__ import annotations

from django.contrib import admin

from .models import ApiToken, TranscriptSegment, TranscriptSession


class TranscriptSegmentInline(admin.TabularInline):
    model = TranscriptSegment
    fields = ("seq", "start", "end", "text", "edited_text")
    readonly_fields = ("seq", "start", "end", "text")
    extra = 0
    can_delete = False


@admin.register(TranscriptSession)
class TranscriptSessionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "owner", "status", "language", "duration", "started_at")
    list_filter = ("status", "language", "started_at")
    search_fields = ("title", "owner__username", "segments__text")
    list_select_related = ("owner",)
    readonly_fields = (
        "id",
        "engine",
        "model_name",
        "audio_format",
        "started_at",
        "ended_at",
        "duration",
        "client_info",
    )
    inlines = [TranscriptSegmentInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "created_at")
    raw_id_fields = ("user",)
