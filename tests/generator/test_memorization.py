"""The memorization check on real chest X-rays (public-cxr): a training image
planted among generated ones is flagged, also re-encoded and shifted; held-out real
images of other patients are not. Plus the pieces on hand-made features."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from generator import memorization
from generator.metrics import inception_helper
from tests.conftest import SHARED_DATA, require_shared

PUBLIC_CXR = SHARED_DATA / "public-cxr"
SIZE = (64, 64)  # the shipped mini model's size, where the check runs for it
TRAINING = 60
HELDOUT = 30  # for the threshold; as many other held-out images are "generated"
PLANTED = (7, 33, 50)


def reencoded_and_shifted(image: Image.Image, shift: int) -> Image.Image:
    """JPEG at quality 75, then PNG, then moved ``shift`` px right and down (the
    edge rows repeated into the gap)."""
    jpeg = io.BytesIO()
    image.convert("L").save(jpeg, format="JPEG", quality=75)
    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg.getvalue())).save(png, format="PNG")
    pixels = np.asarray(Image.open(io.BytesIO(png.getvalue())).convert("L"))
    moved = np.pad(pixels, ((shift, 0), (shift, 0)), mode="edge")
    return Image.fromarray(moved[: pixels.shape[0], : pixels.shape[1]])


def load(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")


@pytest.fixture(scope="module")
def cxr():
    """Training images, held-out images for the threshold, and held-out images of
    other patients that stand for honest generated images."""
    from generator.mini import read_records, split_by_patient

    require_shared(PUBLIC_CXR / "labels.csv")
    split = split_by_patient(read_records(PUBLIC_CXR))
    patients = sorted({r.patient_id for r in split.heldout})
    calibration = set(patients[::2])
    heldout = [r for r in split.heldout if r.patient_id in calibration]
    others = [r for r in split.heldout if r.patient_id not in calibration]
    return {
        "training": [load(r.path) for r in split.train[:TRAINING]],
        "heldout": [load(r.path) for r in heldout[:HELDOUT]],
        "others": [load(r.path) for r in others[:HELDOUT]],
    }


@pytest.mark.slow
def test_it_flags_planted_training_images_and_no_held_out_patient(cxr):
    helper = inception_helper()
    training = cxr["training"]
    small = training[PLANTED[2]].resize(SIZE, Image.Resampling.BICUBIC)
    planted = [
        training[PLANTED[0]],  # as it is
        reencoded_and_shifted(training[PLANTED[1]], 3),  # at its own 256²
        reencoded_and_shifted(small, 1),  # at the generated images' 64²
    ]
    generated = cxr["others"] + planted

    rows = {
        name: memorization.features(helper, images, SIZE)
        for name, images in (
            ("training", training),
            ("heldout", cxr["heldout"]),
            ("generated", generated),
        )
    }
    found = memorization.check(rows["generated"], rows["training"], rows["heldout"])

    first_planted = len(cxr["others"])
    assert sorted(found.flagged) == list(range(first_planted, len(generated)))
    assert found.nearest.index[first_planted:].tolist() == list(PLANTED)
    # The threshold, recomputed with scipy's cosine distance on rows centred on
    # the training mean: above every calibration image by the margin, and no
    # honest image above it.
    centre = rows["training"].mean(axis=0)
    centred = {name: values - centre for name, values in rows.items()}
    heldout_best = 1 - cdist(centred["heldout"], centred["training"], "cosine").min(1)
    assert found.threshold.value == pytest.approx(
        heldout_best.max() + memorization.THRESHOLD_MARGIN, abs=1e-5
    )
    honest_best = 1 - cdist(centred["generated"], centred["training"], "cosine").min(1)
    assert found.nearest.cosine == pytest.approx(honest_best, abs=1e-5)
    assert honest_best[:first_planted].max() < found.threshold.value


def test_it_finds_the_nearest_row_by_cosine_as_brute_force_does():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(50, 16))
    queries = rng.normal(size=(30, 16)) * rng.uniform(0.1, 10, size=(30, 1))
    found = memorization.nearest(queries, references)
    distances = cdist(queries, references, "cosine")
    assert found.index.tolist() == distances.argmin(axis=1).tolist()
    assert found.cosine == pytest.approx(1 - distances.min(axis=1))


def test_it_finds_the_nearest_image_by_ssim_pair_by_pair():
    import torch
    from pytorch_msssim import ssim

    rng = np.random.default_rng(3)
    references = [
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8))
        for _ in range(6)
    ]
    queries = [references[4].copy(), references[1].rotate(90)]
    queries.append(Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)))

    found = memorization.nearest_by_ssim(queries, references, size=32)

    def pair(first: Image.Image, second: Image.Image) -> float:
        as_tensor = [
            torch.from_numpy(np.asarray(i.resize((32, 32), Image.Resampling.BICUBIC)))
            .float()[None, None]
            .div(255)
            for i in (first, second)
        ]
        return float(ssim(*as_tensor, data_range=1.0))

    scores = np.array([[pair(q, r) for r in references] for q in queries])
    assert found.index.tolist() == scores.argmax(axis=1).tolist()
    assert found.cosine == pytest.approx(scores.max(axis=1), abs=1e-5)
    assert (found.index[0], found.cosine[0]) == (4, pytest.approx(1.0))
    assert found.cosine[2] < 0.5


def test_it_sets_the_threshold_above_every_held_out_image_by_the_margin():
    cosines = np.array([0.71, 0.93, 0.88, 0.9])
    threshold = memorization.threshold_from_heldout(cosines, margin=0.03)
    assert threshold.value == pytest.approx(0.96)
    assert (threshold.heldout_images, threshold.heldout_max) == (4, 0.93)
    assert threshold.heldout_median == pytest.approx(0.89)
    assert "4 held-out real images (0.9300) + margin 0.03" in threshold.rule


def test_it_refuses_a_threshold_from_fewer_than_two_held_out_images():
    with pytest.raises(ValueError, match="at least 2 held-out images, got 1"):
        memorization.threshold_from_heldout(np.array([0.9]))


def test_it_flags_generated_rows_closer_than_any_held_out_row_most_similar_first():
    rng = np.random.default_rng(1)
    training = rng.normal(size=(40, 8)) + 5  # an offset all rows share, as X-rays do
    heldout = rng.normal(size=(10, 8)) + 5
    copies = training[[3, 17]] + rng.normal(scale=0.01, size=(2, 8))
    generated = np.vstack([rng.normal(size=(5, 8)) + 5, copies])

    found = memorization.check(generated, training, heldout, margin=0.05)

    centre = training.mean(axis=0)

    def best(rows: np.ndarray) -> np.ndarray:
        return 1 - cdist(rows - centre, training - centre, "cosine").min(axis=1)

    threshold = best(heldout).max() + 0.05
    assert found.threshold.value == pytest.approx(threshold)
    scores = best(generated)
    expected = [int(i) for i in np.argsort(-scores) if scores[i] > threshold]
    assert found.flagged == expected
    assert {5, 6} <= set(found.flagged)
    assert found.nearest.index[5:].tolist() == [3, 17]
