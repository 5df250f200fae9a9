from __future__ import annotations

from django.urls import path

from . import views

app_name = "transcribe"

urlpatterns = [
    path("sessions/", views.SessionListView.as_view(), name="session-list"),
    path("sessions/<uuid:pk>/", views.SessionDetailView.as_view(), name="session-detail"),
    path(
        "sessions/<uuid:pk>/export.<str:extension>", views.SessionExportView.as_view(), name="session-export"
    ),
]
