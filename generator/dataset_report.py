"""A synthetic dataset's quality and privacy report, computed from its images.

1. Inception pool features of the generated images (once, for FID and for the
   memorization check alike; every image prepared by ``memorization.prepare``).
2. FID against real frontal images, only when both sides have at least
   ``min_fid_images``; otherwise "too few images", with both counts.
3. Diversity: the mean MS-SSIM between images of the same prompt (lower is more
   diverse), each image at 256² grayscale (``metrics.ms_ssim_pairs``).
4. Memorization (``generator.memorization``): each generated image's nearest
   training image, its cosine and SSIM; pairs above a threshold set from held-out
   real images are flagged. Without a known training set, the report says so.
5. The same figures per finding, where prompts carry findings (MeSH terms).

Plain Python: images come as paths or functions that open them; the training
features come from a function, so the caller can cache them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from generator import memorization
from generator.evaluation import ImageSource, open_gray
from generator.metrics import frechet_distance, inception_helper, ms_ssim_pairs

NO_FINDING = "(none)"
# Given the function that computes training features, returns them (maybe cached).
FeatureCache = Callable[[Callable[[], np.ndarray]], np.ndarray]
NEAREST_COLUMNS = ("img_savename", "training_image", "cosine", "ssim", "flagged")


class ReportStopped(Exception):
    """The progress callback asked to stop (cancel, or the job was taken over)."""


@dataclass(frozen=True)
class ReportImage:
    """One image: its name, where to read it, its prompt's index (generated images)
    and its findings."""

    name: str
    source: ImageSource
    prompt: int = -1
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingSet:
    """The images a model was trained on and real images it never saw."""

    identity: str
    description: str
    training: Sequence[ReportImage]
    heldout: Sequence[ReportImage]


@dataclass(frozen=True)
class ReportSettings:
    size: tuple[int, int]  # the generated images' width and height
    min_fid_images: int
    margin: float = memorization.THRESHOLD_MARGIN


@dataclass
class Report:
    """The figures (JSON); the flagged pairs as (generated, training) indices; and
    every generated image's nearest training image as CSV rows (NEAREST_COLUMNS)."""

    results: dict
    flagged_pairs: list[tuple[int, int]] = field(default_factory=list)
    nearest_rows: list[list] = field(default_factory=list)


def dataset_report(
    generated: Sequence[ReportImage],
    real: Sequence[ReportImage],
    training_set: TrainingSet | None,
    settings: ReportSettings,
    training_cache: FeatureCache | None = None,
    progress: Callable[[str], bool] = lambda phase: True,
    unknown_training: str = "",
) -> Report:
    """The report of ``generated`` against ``real`` (FID) and ``training_set``.

    ``training_cache`` is handed the function that computes the training images'
    feature rows and returns them, from its cache or computed (default: computed).
    ``progress`` is called between phases and stops the report by returning False.
    """
    helper = inception_helper()

    def phase(name: str) -> None:
        if progress(name) is False:
            raise ReportStopped(name)

    def featurize(images: Sequence[ReportImage]) -> np.ndarray:
        opened = (open_gray(image.source) for image in images)
        return memorization.features(helper, opened, settings.size)

    # 1. Generated features, once.
    phase("generated features")
    generated_rows = featurize(generated)

    # 2. FID against the real images, above the minimum on both sides.
    phase("FID")
    real_rows = featurize(real) if len(real) >= settings.min_fid_images else None
    fid = fid_entry(generated_rows, real_rows, len(real), settings.min_fid_images)

    # 3. Diversity within each prompt.
    phase("diversity")
    per_prompt = prompt_msssim(generated)

    # 4. Memorization against the training set, when one is known.
    phase("memorization")
    memo, nearest_ssim, found = None, [], None
    if training_set is not None:

        def compute() -> np.ndarray:
            return featurize(training_set.training)

        training_rows = compute() if training_cache is None else training_cache(compute)
        found = memorization.check(
            generated_rows,
            training_rows,
            featurize(training_set.heldout),
            settings.margin,
        )
        phase("pair SSIM")
        nearest_ssim = [
            memorization.pair_ssim(
                open_gray(image.source),
                open_gray(training_set.training[index].source),
                settings.size,
            )
            for image, index in zip(generated, found.nearest.index, strict=True)
        ]
        memo = memorization_entry(generated, training_set, found, nearest_ssim)

    # 5. The same figures per finding.
    phase("by finding")
    by_finding = findings_breakdown(
        generated, real, generated_rows, real_rows, per_prompt, found, settings
    )
    results = {
        "images": len(generated),
        "size": list(settings.size),
        "fid": fid,
        "diversity": diversity_entry(per_prompt),
        "memorization": memo
        or {"known": False, "reason": unknown_training or "No training set known."},
        "by_finding": by_finding,
    }
    if found is None:
        return Report(results)
    pairs = [(i, int(found.nearest.index[i])) for i in found.flagged]
    return Report(
        results, pairs, nearest_table(generated, training_set, found, nearest_ssim)
    )


def nearest_table(
    generated: Sequence[ReportImage],
    training_set: TrainingSet,
    found: memorization.Check,
    nearest_ssim: Sequence[float],
) -> list[list]:
    flagged = set(found.flagged)
    return [
        [
            image.name,
            training_set.training[int(found.nearest.index[i])].name,
            round(float(found.nearest.cosine[i]), 6),
            round(float(nearest_ssim[i]), 6),
            int(i in flagged),
        ]
        for i, image in enumerate(generated)
    ]


def fid_entry(
    generated: np.ndarray, real: np.ndarray | None, real_count: int, minimum: int
) -> dict:
    """FID, or None with ``too_few`` when either side has fewer than ``minimum``."""
    entry = {
        "generated": len(generated),
        "real": real_count,
        "min_images": minimum,
        "too_few": len(generated) < minimum or real_count < minimum,
        "value": None,
    }
    if not entry["too_few"] and real is not None:
        entry["value"] = frechet_distance(
            generated.astype(np.float64), real.astype(np.float64)
        )
    return entry


def prompt_msssim(generated: Sequence[ReportImage]) -> dict[int, list[float]]:
    """Each prompt's pairwise MS-SSIM scores (prompts with two images or more)."""
    groups: dict[int, list[ReportImage]] = defaultdict(list)
    for image in generated:
        groups[image.prompt].append(image)
    return {
        prompt: ms_ssim_pairs([open_gray(image.source) for image in images])
        for prompt, images in groups.items()
        if len(images) >= 2
    }


def diversity_entry(per_prompt: dict[int, list[float]]) -> dict:
    scores = [score for pairs in per_prompt.values() for score in pairs]
    return {
        "mean_msssim": float(np.mean(scores)) if scores else None,
        "prompts": len(per_prompt),
        "pairs": len(scores),
    }


def memorization_entry(
    generated: Sequence[ReportImage],
    training_set: TrainingSet,
    found: memorization.Check,
    nearest_ssim: Sequence[float],
) -> dict:
    def pair(i: int) -> dict:
        index = int(found.nearest.index[i])
        return {
            "image": generated[i].name,
            "training_image": training_set.training[index].name,
            "cosine": float(found.nearest.cosine[i]),
            "ssim": float(nearest_ssim[i]),
        }

    order = np.argsort(-found.nearest.cosine)
    return {
        "known": True,
        "training_set": training_set.description,
        "training_identity": training_set.identity,
        "training_images": len(training_set.training),
        "heldout_images": len(training_set.heldout),
        "threshold": found.threshold.to_json(),
        "cosine": memorization.summary(found.nearest.cosine),
        "ssim": memorization.summary(nearest_ssim),
        "flagged_count": len(found.flagged),
        "flagged": [pair(i) for i in found.flagged],
        "closest": [pair(int(i)) for i in order[:10]],
    }


def findings_breakdown(
    generated: Sequence[ReportImage],
    real: Sequence[ReportImage],
    generated_rows: np.ndarray,
    real_rows: np.ndarray | None,
    per_prompt: dict[int, list[float]],
    found: memorization.Check | None,
    settings: ReportSettings,
) -> dict:
    """FID, diversity and memorization per finding of the generated images'
    prompts; empty when no prompt carries a finding."""
    if not any(image.findings for image in generated):
        return {}
    by_finding: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(generated):
        for finding in image.findings or (NO_FINDING,):
            by_finding[finding].append(i)
    real_of: dict[str, list[int]] = defaultdict(list)
    for i, image in enumerate(real):
        for finding in image.findings or (NO_FINDING,):
            real_of[finding].append(i)
    breakdown = {}
    for finding, rows in sorted(by_finding.items()):
        reals = real_of.get(finding, [])
        prompts = {generated[i].prompt for i in rows}
        entry = {
            "images": len(rows),
            "fid": fid_entry(
                generated_rows[rows],
                None if real_rows is None else real_rows[reals],
                len(reals),
                settings.min_fid_images,
            ),
            "diversity": diversity_entry(
                {p: per_prompt[p] for p in prompts if p in per_prompt}
            ),
        }
        if found is not None:
            flagged = set(found.flagged)
            entry["flagged_count"] = sum(i in flagged for i in rows)
            entry["cosine"] = memorization.summary(found.nearest.cosine[rows])
        breakdown[finding] = entry
    return breakdown
