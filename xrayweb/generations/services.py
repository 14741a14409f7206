"""Generation requests: create (within quotas), cancel, rerun, and store results.

Claims, leases, fenced writes and recovery are the one job lifecycle of
xrayweb.jobs; the dispatcher decides when a request reaches the broker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from generator.loading import is_reachable
from generator.sampling import GenerationParams
from xrayweb.cases.models import Case
from xrayweb.generations import availability
from xrayweb.generations.models import (
    GenerationImage,
    GenerationRequest,
    ModelKind,
    ModelVersion,
)
from xrayweb.jobs import files, lifecycle, permissions, quotas
from xrayweb.jobs.models import TERMINAL_STATUSES
from xrayweb.jobs.runtime import Attempt

logger = logging.getLogger(__name__)

GENERATION_DEFAULTS = "generation_defaults.json"
WITHDRAWN = (
    "Model version {name!r} was withdrawn (it is not active), so it cannot be run "
    "again; pick an active version on the generate page."
)


class ModelWithdrawn(ValueError):
    """A run asked for of a model version that is not active."""


# The generator's own defaults, under a model's recommended ones; a blank seed is
# drawn at random, not 0.
SAMPLING_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(GenerationParams)
    if field.name not in ("prompt", "seed")
}
# The settings that replace the generator's measured defaults for this site.
SITE_DEFAULTS = {
    "steps": "XRAY_DEFAULT_STEPS",
    "scheduler": "XRAY_DEFAULT_SCHEDULER",
    "deep_cache_interval": "XRAY_DEEP_CACHE_INTERVAL",
    "token_merging": "XRAY_TOKEN_MERGING",
}


def sampling_defaults() -> dict:
    """What a new request starts with before its model's recommendations: the
    generator's measured defaults, each replaced by its site setting when set."""
    site = {name: getattr(settings, setting) for name, setting in SITE_DEFAULTS.items()}
    return {**SAMPLING_DEFAULTS, **{k: v for k, v in site.items() if v is not None}}


def random_seed() -> int:
    return secrets.randbelow(2**32)


def model_version_default(
    known: availability.Known | availability.NotRead = availability.NOT_READ,
) -> ModelVersion:
    """The model a new request starts with: the preferred one (SD v1.x from
    XRAY_BASE_MODEL, else the shipped offline model, else the untrained tiny model)
    that a live worker said it can load. While no generation worker is live, the
    preferred one this host can load (the shipped models are on every host).
    """
    if isinstance(known, availability.NotRead):
        known = availability.availability()
    if known is not None:
        for version in _default_candidates():
            if known.get(version.pk):
                return version
    return model_versions_register()[0]


def model_versions_offered(known: availability.Known) -> list[ModelVersion]:
    """The active versions a user may pick, each with ``is_default``, ``available``
    (None while no generation worker is live) and ``unavailable_reason``."""
    default = model_version_default(known)
    versions = list(ModelVersion.objects.filter(is_active=True))
    for version in versions:
        version.is_default = version.pk == default.pk
        version.available = None if known is None else known.get(version.pk, False)
        refused = availability.refusal(version, known)
        version.unavailable_reason = availability.UNAVAILABLE if refused else None
    return versions


def generation_initial(
    *,
    known: availability.Known,
    version_id: object = None,
    case: Case | None = None,
) -> dict:
    """The generate form's starting values: the recommended parameters of the model
    asked for (else of the default model), and the report of ``case``, if any."""
    version = None
    if isinstance(version_id, int) and not isinstance(version_id, bool):
        version = ModelVersion.objects.filter(pk=version_id, is_active=True).first()
    if version is None:
        version = model_version_default(known)
    initial: dict = {
        **sampling_defaults(),
        **version.config.get("defaults", {}),
        "model_version": version.pk,
        "prompt_in_png": settings.XRAY_PROMPT_IN_PNG,
    }
    if case is not None:
        initial.update(case=case, prompt=case.prompt)
    return initial


def base_model_register() -> ModelVersion | None:
    """The configured SD v1.x base as a row, if this host can load it: run by each
    worker at start, since the web host may have neither the weights nor the Hub
    cache that the workers have."""
    base, revision = settings.XRAY_BASE_MODEL, settings.XRAY_BASE_REVISION
    if base and is_reachable(base, revision):
        return _model_version(f"{base}@{revision}", ModelKind.BASE, base, revision)
    return None


def model_versions_register() -> list[ModelVersion]:
    """The default-model candidates this host can load, as rows, best first (the
    shipped offline models are on every host)."""
    base = base_model_register()
    found = [base] if base else []
    mini = settings.XRAY_MINI_MODEL_DIR
    if (mini / "model_index.json").is_file():
        config = {"defaults": _generation_defaults(mini)}
        found.append(_model_version(mini.name, ModelKind.MINI, str(mini), "", config))
    tiny = str(settings.XRAY_TINY_MODEL_DIR)
    found.append(_model_version("tiny-untrained", ModelKind.TINY, tiny, ""))
    return found


def model_version_set_active(
    *, versions: Iterable[ModelVersion], user: AbstractBaseUser, active: bool
) -> int:
    """Activate (offer to users) or withdraw model versions; how many changed."""
    permissions.require(user, permissions.ACTIVATE_MODEL, "activate model versions")
    pks = [version.pk for version in versions]
    return ModelVersion.objects.filter(pk__in=pks).update(is_active=active)


MODEL_FIELDS = ("kind", "source", "revision")


def model_version_save(
    *,
    version: ModelVersion,
    user: AbstractBaseUser,
    adding: bool,
    changed: Iterable[str],
) -> bool:
    """Save a version edited in the admin; whether it is active. Without the
    permission to activate, a new version, or one whose model changed (kind, source
    or revision), is saved withdrawn: only those who hold the permission decide
    what users are offered."""
    if not user.has_perm(permissions.ACTIVATE_MODEL) and (
        adding or set(changed) & set(MODEL_FIELDS)
    ):
        version.is_active = False
    version.save()
    return version.is_active


def _default_candidates() -> list[ModelVersion]:
    """Untrained defaults, best first: SD v1.x, the shipped model, the tiny one."""
    rank = {ModelKind.BASE: 0, ModelKind.MINI: 1, ModelKind.TINY: 2}
    versions = ModelVersion.objects.filter(
        is_active=True, kind__in=list(rank), files_key=""
    )
    return sorted(versions, key=lambda v: (rank[v.kind], -v.pk))


def _model_version(
    name: str, kind: str, source: str, revision: str, config: dict | None = None
) -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(
        name=name,
        defaults={
            "kind": kind,
            "source": source,
            "revision": revision,
            "config": config or {},
        },
    )
    return version


def _generation_defaults(folder: Path) -> dict:
    """Sampling defaults a model folder recommends (generation_defaults.json)."""
    path = folder / GENERATION_DEFAULTS
    return json.loads(path.read_text()) if path.is_file() else {}


def generation_request_create(
    *,
    user: AbstractBaseUser,
    params: GenerationParams,
    model_version: ModelVersion,
    case: Case | None = None,
    prompt_in_png: bool = True,
    placement_requested: dict | None = None,
) -> GenerationRequest:
    """Store a validated request within the user's quotas (QuotaExceeded names the
    cost and the limit); the dispatcher sends it once the transaction commits.
    ``placement_requested``: the placement_record of a run to match (a rerun's)."""
    with transaction.atomic():
        # One submit at a time per user, so two cannot spend the same budget.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        quotas.generation_quota_check(
            user=user,
            steps=params.steps,
            width=params.width,
            height=params.height,
            images=params.num_images,
        )
        request = GenerationRequest.objects.create(
            user=user,
            model_version=model_version,
            case=case,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seed=params.seed,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            scheduler=params.scheduler,
            width=params.width,
            height=params.height,
            num_images=params.num_images,
            lora_scale=params.lora_scale,
            deep_cache_interval=params.deep_cache_interval,
            token_merging=params.token_merging,
            placement_requested=placement_requested or {},
            prompt_in_png=prompt_in_png,
            progress_total=params.steps,
        )
        lifecycle.dispatch_on_commit(GenerationRequest)
    return request


def generation_request_rerun(
    *, request: GenerationRequest, user: AbstractBaseUser
) -> GenerationRequest:
    """A new request with exactly the parameters, model and seed of ``request``,
    asking for the placement it ran in (if recorded); ModelWithdrawn if its model
    version is no longer active."""
    if not request.model_version.is_active:
        raise ModelWithdrawn(WITHDRAWN.format(name=request.model_version.name))
    return generation_request_create(
        user=user,
        params=params_of(request),
        model_version=request.model_version,
        case=request.case,
        prompt_in_png=request.prompt_in_png,
        placement_requested=placement_of(request),
    )


def placement_of(request: GenerationRequest) -> dict[str, str]:
    """Where ``request`` ran, keyed as generator.loading.placement_record; empty
    when no worker recorded it."""
    if not request.device:
        return {}
    return {
        "device": request.device,
        "dtype": request.dtype,
        "torch": request.torch_version,
        "diffusers": request.diffusers_version,
    }


def params_of(request: GenerationRequest) -> GenerationParams:
    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        scheduler=request.scheduler,
        width=request.width,
        height=request.height,
        num_images=request.num_images,
        lora_scale=request.lora_scale,
        deep_cache_interval=request.deep_cache_interval,
        token_merging=request.token_merging,
    )


NOT_DELETABLE = (
    "Request {id} is {status}: cancel it first, then delete it once it has stopped."
)


def generation_request_delete(*, request_id: int, user: AbstractBaseUser) -> str | None:
    """Delete one of the user's own ended requests with its images and their files.

    Returns an error message (NOT_DELETABLE) for a queued or running request, which
    a worker may be writing; None once deleted. Files go after the rows commit: a
    file left by a failed delete is found by the orphan sweep, never a row without
    its file."""
    with transaction.atomic():
        rows = GenerationRequest.objects.select_for_update().filter(
            pk=request_id, user=user
        )
        status = rows.values_list("status", flat=True).first()
        if status is None:
            raise GenerationRequest.DoesNotExist(f"no request {request_id} of {user}")
        if status not in TERMINAL_STATUSES:
            return NOT_DELETABLE.format(id=request_id, status=status)
        keys = [
            key
            for pair in GenerationImage.objects.filter(
                request_id=request_id
            ).values_list("image", "diff_map")
            for key in pair
            if key
        ]
        rows.delete()
        transaction.on_commit(lambda: _storage_delete(keys))
    return None


def _storage_delete(keys: list[str]) -> None:
    for key in keys:
        default_storage.delete(key)


def generation_request_cancel(*, request_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a queued request, or ask its worker to stop a running one (it stops at
    the next denoising step and stores nothing). Returns an error message, or None."""
    return lifecycle.cancel(GenerationRequest, request_id, user)


@dataclass(frozen=True)
class RenderedImage:
    """One result, encoded by the runner: PNG bytes and scores against the case."""

    index: int
    seed: int
    png: bytes
    diff_png: bytes | None = None
    ssim: float | None = None
    psnr: float | None = None


def generation_request_succeed(
    *,
    attempt: Attempt,
    reference_id: int | None,
    images: list[RenderedImage],
    fields: dict,
) -> bool:
    """Store the attempt's PNGs under its own keys, then its rows and success in one
    fenced transaction. A superseded attempt, or any error, leaves no file behind."""
    prefix = GenerationRequest.attempt_prefix(attempt.pk, attempt.number)
    try:
        started = time.perf_counter()
        rows = [_image_row(attempt.pk, prefix, image, reference_id) for image in images]
        timings = dict(fields.get("timings", {}))
        stored_s = timings.get("storage_s", 0.0) + time.perf_counter() - started
        timings["storage_s"] = round(stored_s, 4)  # reading and writing files
        fields = {**fields, "timings": timings}
        with transaction.atomic():
            GenerationImage.objects.bulk_create(rows)
            if not attempt.succeed(**fields):
                transaction.set_rollback(True)
                files.attempt_delete(prefix)
                return False
    except BaseException:
        files.attempt_delete(prefix)
        raise
    return True


def _image_row(
    request_id: int, prefix: str, image: RenderedImage, reference_id: int | None
) -> GenerationImage:
    row = GenerationImage(
        request_id=request_id,
        index=image.index,
        seed=image.seed,
        reference_id=reference_id,
        ssim=image.ssim,
        psnr=image.psnr,
    )
    row.image.name = default_storage.save(
        f"{prefix}{image.index}.png", ContentFile(image.png)
    )
    if image.diff_png is not None:
        row.diff_map.name = default_storage.save(
            f"{prefix}{image.index}_diff.png", ContentFile(image.diff_png)
        )
    return row
