"""What a request's downloads hold: its images as PNG files and its parameters as
JSON, packed in one ZIP. Reads only; the views check who may download."""

from __future__ import annotations

import io
import json
import zipfile

from xrayweb.generations.models import GenerationImage, GenerationRequest

PARAMETER_FIELDS = (
    "prompt",
    "negative_prompt",
    "prompt_used",
    "prompt_dropped",
    "seed",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "num_images",
    "lora_scale",
)


def image_name(image: GenerationImage, kind: str = "image") -> str:
    """A download's file name, numbered from 1 as on the pages."""
    suffix = "_difference" if kind == "diff_map" else ""
    return f"request_{image.request_id}_image_{image.index + 1}{suffix}.png"


def request_parameters(request: GenerationRequest) -> dict:
    """Everything that made the request's images, as JSON-ready values: the model by
    its version name, revision and file hashes (never a host path)."""
    version = request.model_version
    images = list(request.images.all())
    return {
        "request": request.pk,
        "synthetic": True,
        "status": request.status,
        "created_at": request.created_at.isoformat(),
        "case": request.case.uid if request.case else None,
        **{name: getattr(request, name) for name in PARAMETER_FIELDS},
        "model": {
            "name": version.label,
            "kind": version.kind,
            "revision": version.revision,
            "lora_sha256": version.lora_sha256,
            "files_sha256": version.files_sha256,
        },
        "images": [
            {
                "number": image.index + 1,
                "seed": image.seed,
                "file": image_name(image),
                "difference_map": image_name(image, "diff_map")
                if image.diff_map
                else None,
                "ssim": image.ssim,
                "psnr": image.psnr,
            }
            for image in images
        ],
    }


def request_zip(request: GenerationRequest) -> bytes:
    """A ZIP of the request's PNGs, difference maps and parameters.json (images
    are at most 1024², so the archive is built in memory)."""
    buffer = io.BytesIO()
    # PNGs are compressed already: stored as they are; the JSON is deflated.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        parameters = json.dumps(request_parameters(request), indent=2)
        archive.writestr("parameters.json", parameters, zipfile.ZIP_DEFLATED)
        for image in request.images.all():
            for kind in ("image", "diff_map"):
                stored = getattr(image, kind)
                if stored:
                    with stored.open("rb") as handle:
                        archive.writestr(image_name(image, kind), handle.read())
    return buffer.getvalue()
