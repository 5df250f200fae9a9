"""Tests of the ``transcribe_token`` management command, run through ``call_command``."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from transcribe.models import ApiToken, digest_of

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("transcribe_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="secret")


def test_creates_a_token_and_prints_it(alice):
    out, err = run("alice")
    key = out.strip()
    assert out == key + "\n" and err == ""
    assert re.fullmatch(r"[0-9a-f]{40}", key)
    token = ApiToken.objects.get(user=alice)
    # Only a digest is stored: the database never holds the key itself.
    assert token.digest == digest_of(key) and token.prefix == key[:8] and key not in token.digest
    assert ApiToken.user_for(key) == alice


def test_an_existing_key_is_never_shown_again(alice):
    run("alice")
    with pytest.raises(CommandError, match="cannot be shown again.*--rotate"):
        run("alice")
    assert ApiToken.objects.filter(user=alice).count() == 1


def test_a_deactivated_user_cannot_use_the_key(alice):
    key = run("alice")[0].strip()
    alice.is_active = False
    alice.save()
    assert ApiToken.user_for(key) is None


def test_rotate_replaces_the_key(alice):
    old = run("alice")[0].strip()
    new = run("alice", "--rotate")[0].strip()
    assert new != old and re.fullmatch(r"[0-9a-f]{40}", new)
    assert ApiToken.user_for(old) is None  # the old key no longer authenticates
    assert ApiToken.user_for(new) == alice


def test_rotate_without_a_token_creates_one(alice):
    key = run("alice", "--rotate")[0].strip()
    assert ApiToken.user_for(key) == alice


def test_unknown_user_is_an_error():
    with pytest.raises(CommandError, match="No user 'bob'.*--create-user"):
        run("bob")
    assert not get_user_model().objects.filter(username="bob").exists()
    assert not ApiToken.objects.exists()


def test_create_user(capsys):
    out, err = run("bob", "--create-user")
    bob = get_user_model().objects.get(username="bob")
    assert ApiToken.user_for(out.strip()) == bob
    assert "Created user 'bob'" in err
    assert not bob.has_usable_password()  # it can only use the token
    # an existing user is not created twice, and keeps its token
    with pytest.raises(CommandError, match="already has a token"):
        run("bob", "--create-user")
    assert get_user_model().objects.filter(username="bob").count() == 1
    assert ApiToken.user_for(out.strip()) == bob


def test_users_get_different_keys(alice):
    get_user_model().objects.create_user("carol")
    assert run("alice")[0] != run("carol")[0]


def test_missing_username_is_a_usage_error():
    with pytest.raises(CommandError):
        call_command("transcribe_token")
