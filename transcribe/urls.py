from __future__ import annotations

from django.urls import path

from . import health, views

app_name = "transcribe"

urlpatterns = [
    path("", views.RecordView.as_view(), name="record"),
    path("sessions/", views.SessionListView.as_view(), name="session-list"),
    path("sessions/<uuid:pk>/", views.SessionDetailView.as_view(), name="session-detail"),
    path(
        "sessions/<uuid:pk>/export.<str:extension>", views.SessionExportView.as_view(), name="session-export"
    ),
    path("sessions/<uuid:pk>/rename/", views.SessionRenameView.as_view(), name="session-rename"),
    path("sessions/<uuid:pk>/delete/", views.SessionDeleteView.as_view(), name="session-delete"),
    path("sessions/<uuid:pk>/audio.ogg", views.SessionAudioView.as_view(), name="session-audio"),
    path("tickets/", views.ticket, name="ticket"),
    path("metrics", health.metrics, name="metrics"),
    path("healthz", health.healthz, name="healthz"),
]
