"""Tests of the ``transcribe_token`` management command, run through ``call_command``."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from transcribe.models import ApiToken

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
    assert ApiToken.objects.get(key=key).user == alice


def test_prints_the_same_key_twice(alice):
    first, _ = run("alice")
    second, _ = run("alice")
    assert first == second
    assert ApiToken.objects.filter(user=alice).count() == 1


def test_rotate_replaces_the_key(alice):
    old = run("alice")[0].strip()
    new = run("alice", "--rotate")[0].strip()
    assert new != old and re.fullmatch(r"[0-9a-f]{40}", new)
    assert not ApiToken.objects.filter(key=old).exists()  # the old key no longer authenticates
    assert ApiToken.objects.get(user=alice).key == new
    assert run("alice")[0].strip() == new


def test_rotate_without_a_token_creates_one(alice):
    key = run("alice", "--rotate")[0].strip()
    assert ApiToken.objects.get(user=alice).key == key


def test_unknown_user_is_an_error():
    with pytest.raises(CommandError, match="No user 'bob'.*--create-user"):
        run("bob")
    assert not get_user_model().objects.filter(username="bob").exists()
    assert not ApiToken.objects.exists()


def test_create_user(capsys):
    out, err = run("bob", "--create-user")
    bob = get_user_model().objects.get(username="bob")
    assert ApiToken.objects.get(user=bob).key == out.strip()
    assert "Created user 'bob'" in err
    assert not bob.has_usable_password()  # it can only use the token
    # an existing user is not created twice, and keeps its token
    out2, err2 = run("bob", "--create-user")
    assert out2 == out and err2 == ""
    assert get_user_model().objects.filter(username="bob").count() == 1


def test_users_get_different_keys(alice):
    get_user_model().objects.create_user("carol")
    assert run("alice")[0] != run("carol")[0]


def test_missing_username_is_a_usage_error():
    with pytest.raises(CommandError):
        call_command("transcribe_token")
