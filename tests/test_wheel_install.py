"""The built wheel, installed into a fresh virtualenv, serves a second Django site set up from the README.

The repository's layout is flat, so ``transcribe/`` is importable from the repo root and the system
site-packages holds an editable install of it: a wheel missing templates, static files or migrations
would still pass every other test. Here nothing of the checkout can be imported: the site is
``django-admin startproject`` plus the README's "Add it to your site" blocks, copied verbatim, and the
app comes from the wheel only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Left behind by builds and runs; never part of what is packaged.
SCRATCH = (
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".git",
    "build",
    "dist",
    "media",
    "staticfiles",
    "db.sqlite3",
)


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def copy_sources(dest: Path) -> Path:
    """Copy the checkout as it would be committed (tracked plus untracked, not ignored files).

    The wheel is built from this copy so that setuptools' ``build/`` and ``*.egg-info`` land in
    tmp_path, never in the working tree.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist, say)
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*SCRATCH))
        return dest
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # --cached also lists files deleted from the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def readme_block(first_line: str) -> str:
    """The fenced block of the README's "Add it to your site" section that starts with ``first_line``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Add it to your site", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```(?:python|django)\n(.*?)```", section, flags=re.DOTALL):
        if block.startswith(first_line):
            return str(block)
    pytest.fail(f"README's 'Add it to your site' has no block starting with {first_line!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, cookie: str | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}"} if cookie else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


@dataclass
class Site:
    python: Path  # the virtualenv's interpreter
    folder: Path  # the second project, beside its manage.py
    env: dict[str, str]
    token: str  # API token of the user "visitor"
    cookie: str  # a signed-in Django session of "visitor"

    def manage(self, *args: str) -> str:
        return run(self.python, "manage.py", *args, cwd=self.folder, env=self.env)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout to build from."""
    return copy_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from the copy. No build isolation: an isolated build would fetch
    setuptools from PyPI, and the one installed here satisfies ``build-system.requires``."""
    out = tmp_path_factory.mktemp("wheel")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        sources,
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        out,
        cwd=out,
    )
    (built,) = out.glob("django_transcribe-*.whl")
    return built


@pytest.fixture(scope="module")
def site_project(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A fresh virtualenv holding the wheel, and a second site made of startproject plus the README's
    blocks, migrated, with a user "visitor" who has a token and a signed-in session."""
    base = tmp_path_factory.mktemp("second-site")
    venv = base / "venv"
    # Installing the dependencies (torch, ctranslate2...) from PyPI would take minutes, so the venv
    # sees this interpreter's site-packages. Not with --system-site-packages, though: site.py would
    # then run that directory's .pth files, including the editable install's, whose meta-path finder
    # maps "transcribe" (and each "transcribe.<child>") to /work/main. It comes after the normal
    # path finder, so the wheel's copy would win for what the wheel has, but a module or data file
    # missing from the wheel would quietly load from the checkout. A plain path line in a .pth of
    # the venv's own adds those directories to sys.path without processing their .pth files, so
    # the editable finder is never installed and the wheel is the only "transcribe" there is.
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    python = venv / "bin" / "python"
    purelib = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=base).strip()
    )
    dependencies = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (purelib / "_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    # No PYTHONPATH, no user site, and no settings of the test run leak into the second site.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO_"))}
    env |= {"PYTHONNOUSERSITE": "1", "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    # pip (the system's, running in the venv) installs into the venv; the editable install it also
    # sees lies outside the environment and is left alone.
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=base, env=env)

    folder = base / "site"
    folder.mkdir()
    run(python, "-m", "django", "startproject", "mysite", folder, cwd=base, env=env)
    settings = folder / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + "\n"
        + readme_block("# mysite/settings.py")
        + 'STATIC_ROOT = BASE_DIR / "collected-static"\n'  # the site's deployment, not the app's
    )
    (folder / "mysite" / "asgi.py").write_text(readme_block("# mysite/asgi.py"))
    urls = folder / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\n" + readme_block("# mysite/urls.py"))
    override = folder / "templates" / "transcribe" / "base.html"
    override.parent.mkdir(parents=True)
    override.write_text(readme_block("{# templates/transcribe/base.html"))

    bare = Site(python, folder, env, token="", cookie="")
    bare.manage("migrate", "--noinput")
    token = bare.manage("transcribe_token", "visitor", "--create-user").strip()
    cookie = bare.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; from django.test import Client; c = Client(); "
        "c.force_login(get_user_model().objects.get(username='visitor')); print(c.cookies['sessionid'].value)",
    ).split()[-1]  # the shell may first say what it imported
    return Site(python, folder, env, token, cookie)


@pytest.fixture(scope="module")
def server(site_project: Site) -> Iterator[int]:
    """daphne from the venv serving the second site's asgi.py on a free port; yields the port."""
    port = free_port()
    log = site_project.folder / "daphne.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                site_project.python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "mysite.asgi:application",
            ],
            cwd=site_project.folder,
            env=site_project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"daphne did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_wheel_holds_the_app_and_nothing_else(wheel: Path, sources: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/", 1)[0] for name in names} == {"transcribe", "django_transcribe-0.1.0.dist-info"}
    assert not [n for n in names if n.startswith(("project/", "tests/", "bench/"))]
    # Every file of the app is in the wheel, whatever its kind (a new data file needs package-data).
    app = {
        path.relative_to(sources).as_posix()
        for path in (sources / "transcribe").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert app - names == set()
    for folder in (
        "transcribe/templates/transcribe/",
        "transcribe/static/transcribe/",
        "transcribe/migrations/",
    ):
        assert any(n.startswith(folder) for n in names), f"nothing under {folder} in the wheel"
    assert {"transcribe/templates/transcribe/base.html", "transcribe/migrations/0001_initial.py"} <= names
    assert "transcribe/py.typed" in names


def test_the_venv_imports_transcribe_from_the_wheel(site_project: Site) -> None:
    probe = (
        "import json, sys, transcribe; print(json.dumps({'file': transcribe.__file__, 'path': sys.path, "
        "'finders': [repr(f) for f in sys.meta_path]}))"
    )
    found = json.loads(run(site_project.python, "-c", probe, cwd=site_project.folder, env=site_project.env))
    venv = site_project.python.parent.parent
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert not [f for f in found["finders"] if "editable" in f.lower()]


def test_the_site_streams_a_clip_through_its_socket(
    site_project: Site, server: int, audio_dir: Path, refs: dict[str, str]
) -> None:
    url = f"ws://127.0.0.1:{server}/ws/transcribe/"
    client = subprocess.run(
        [
            site_project.python,
            "-m",
            "transcribe.client",
            url,
            audio_dir / "jfk.wav",
            "--token",
            site_project.token,
        ]
        + ["--speed", "2", "--quiet"],
        cwd=site_project.folder,
        env=site_project.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert client.returncode == 0, client.stdout + client.stderr
    events = [json.loads(line) for line in client.stdout.splitlines() if line.strip()]
    assert events[0]["type"] == "ready" and events[-1]["type"] == "closed"
    # Measured 0.0 with tiny.en; the margin is for timing-dependent utterance cuts.
    assert wer(refs["jfk.wav"], str(events[-1]["text"])) <= 0.15

    # The session was stored in the second site's database and its owner sees it, in that site's header.
    status, _, body = get(server, "/transcribe/sessions/", cookie=site_project.cookie)
    assert status == 200
    assert "jfk.wav" in body and "My site" in body


def test_the_site_serves_the_app_pages(server: int, site_project: Site) -> None:
    status, headers, _ = get(server, "/transcribe/sessions/")
    assert (status, headers["Location"]) == (302, "/accounts/login/?next=/transcribe/sessions/")
    status, _, body = get(server, "/transcribe/sessions/", cookie=site_project.cookie)
    assert status == 200
    assert '<a class="brand" href="/">My site</a>' in body  # the README's override of the header block
    assert "<title>" in body and "<main>" in body  # the rest is still the app's base


def test_collectstatic_gathers_the_app_files(site_project: Site, wheel: Path) -> None:
    site_project.manage("collectstatic", "--noinput")
    collected = site_project.folder / "collected-static"
    static = [
        n.removeprefix("transcribe/static/")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.startswith("transcribe/static/") and not n.endswith("/")
    ]
    assert static
    assert [name for name in static if not (collected / name).is_file()] == []
    assert (collected / "admin" / "css" / "base.css").is_file()
