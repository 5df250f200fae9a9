from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from transcribe.health import healthz

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("accounts/", include("django.contrib.auth.urls")),  # login, logout (POST), password change/reset
    path("admin/", admin.site.urls),
    path("transcribe/", include("transcribe.urls")),
    path("healthz", healthz, name="healthz"),  # for load balancers: database and channel layer reachable
]
