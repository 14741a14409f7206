"""Score a model on test cases with the prototype's protocol, in chunks, then combine.

Each case's prompt makes one image (seeded), scored by SSIM and PSNR against the
case's frontal image at 256² grayscale (``generator.metrics.compare``). Chunks of cases
are scored independently, on any number of workers; ``summarize`` combines their
scores into SSIM mean ± std, PSNR, SSIM by MeSH finding and, from the saved images,
an Inception FID between the generated and the real images.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from diffusers import StableDiffusionPipeline
from PIL import Image

from generator.errors import NotEnoughDataError
from generator.metrics import compare, inception_fid
from generator.sampling import GenerationParams, generate

NO_SCORES = "No case was scored: the evaluation has no results to combine"


# A path, or a function that opens the image as a binary file (object storage).
ImageSource = Path | str | Callable[[], BinaryIO]


@dataclass(frozen=True)
class EvaluationCase:
    """One test case: its prompt, its frontal reference image and its MeSH terms."""

    case_id: int
    prompt: str
    reference: ImageSource
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseScore:
    case_id: int
    ssim: float
    psnr: float
    findings: tuple[str, ...]
    image: str

    def to_json(self) -> dict:
        data = asdict(self)
        data["findings"] = list(self.findings)
        return data


def finding_of(mesh_term: str) -> str:
    """The finding of a MeSH term: 'Cardiomegaly/mild' → 'cardiomegaly'."""
    return mesh_term.split("/")[0].strip().lower()


def score_cases(
    pipe: StableDiffusionPipeline,
    cases: Sequence[EvaluationCase],
    params: dict,
    images_dir: Path,
) -> list[CaseScore]:
    """Generate one image per case (``params`` + the case's prompt), save and score it.

    ``params`` holds GenerationParams fields other than the prompt; the seed is the
    same for every case, so two models see the same starting noise.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    scores = []
    for case in cases:
        result = generate(pipe, GenerationParams(prompt=case.prompt, **params))
        image = result.images[0]
        path = images_dir / f"case-{case.case_id}.png"
        image.save(path)
        scored = compare(image, open_gray(case.reference))
        scores.append(
            CaseScore(case.case_id, scored.ssim, scored.psnr, case.findings, str(path))
        )
    return scores


def mean_std(values: Sequence[float]) -> dict:
    """Mean and population std of the finite values, and how many there were."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return {"n": 0, "mean": None, "std": None}
    return {
        "n": len(finite),
        "mean": statistics.fmean(finite),
        "std": statistics.pstdev(finite),
    }


def summarize(
    scores: Sequence[dict],
    references: Sequence[ImageSource] = (),
    with_fid: bool = True,
    generated: Sequence[ImageSource] | None = None,
) -> dict:
    """Combine per-case scores (``CaseScore.to_json`` dicts) into the report.

    FID compares the generated images (``generated``, else each score's saved
    ``image``) with ``references`` (the real frontal images); it needs at least two
    of each. An image is a path or a function that opens it.
    """
    if not scores:
        raise NotEnoughDataError(NO_SCORES)
    ssim = [score["ssim"] for score in scores]
    by_finding = defaultdict(list)
    for score in scores:
        for finding in score["findings"] or ["(none)"]:
            by_finding[finding].append(score["ssim"])
    report = {
        "cases": len(scores),
        "ssim": mean_std(ssim),
        "psnr": mean_std([score["psnr"] for score in scores]),
        "ssim_by_finding": {
            finding: mean_std(values) for finding, values in sorted(by_finding.items())
        },
        "ssim_values": ssim,
        "fid": None,
    }
    if with_fid and len(scores) >= 2 and len(references) >= 2:
        if generated is None:
            generated = [score["image"] for score in scores]
        report["fid"] = inception_fid(_open_all(references), _open_all(generated))
    return report


def _open_all(sources: Sequence[ImageSource]) -> list[Image.Image]:
    return [open_gray(source) for source in sources]


def open_gray(source: ImageSource) -> Image.Image:
    """An image from a path or from a function that opens it, in grayscale."""
    if callable(source):
        with source() as stream, Image.open(stream) as image:
            return image.convert("L")
    with Image.open(source) as image:
        return image.convert("L")
