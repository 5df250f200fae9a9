"""Forms for the user's own transcript pages."""

from __future__ import annotations

from django import forms

from .models import TranscriptSession


class SessionTitleForm(forms.ModelForm):  # type: ignore[type-arg]
    """Renames a session; a blank title falls back to the start time (``TranscriptSession.__str__``)."""

    class Meta:
        model = TranscriptSession
        fields = ["title"]
        widgets = {"title": forms.TextInput(attrs={"placeholder": "Untitled", "autocomplete": "off"})}
