"""Find and load a Stable Diffusion v1.x pipeline: a Hub id, a local folder or a file.

The same function loads the real SD v1.4 weights and the offline test models, so the
platform and the tests go through one code path.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from generator.errors import ModelNotFoundError

DEFAULT_HUB_ID = "CompVis/stable-diffusion-v1-4"
# A branch name, not a commit: no commit hash of the Hub repo could be verified from
# this offline machine. Operators pin a commit with XRAY_BASE_REVISION; every model
# version row stores the revision it was loaded with.
DEFAULT_REVISION = "main"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

MISSING_FOLDER = (
    "No model folder at {path}: expected a diffusers folder with model_index.json."
)
NOT_A_PIPELINE = (
    "{path} is not a diffusers pipeline folder: model_index.json is missing."
)
MISSING_FILE = "No checkpoint file at {path}."
HUB_UNAVAILABLE = (
    "Hub model {source!r} at revision {revision!r} is not in the local cache "
    "({cache}) and downloading is {mode}: {reason}"
)


@dataclass(frozen=True)
class Placement:
    """Where the weights live and in which precision."""

    device: str
    dtype: torch.dtype
    channels_last: bool


@functools.cache  # pick_placement asks once per generation; the CPU does not change
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU runs bf16 matrix maths in hardware (AVX512-BF16 or AMX).

    Without those instructions PyTorch's CPU kernels for bf16 fall back to slow
    reference paths: bench/sd_cpu.py measured bf16 about 50 times slower than fp32 on
    an AVX2-only EPYC, and 2.3 to 2.9 times faster on an EPYC with AVX512-BF16.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", text))


def pick_placement(
    device: str | None = None,
    dtype: str | None = None,
    channels_last: bool | None = None,
) -> Placement:
    """CUDA in fp16 when there is a GPU; on CPU bf16 where the CPU has native bf16,
    else fp32. Each choice can be overridden.

    bench/sd_cpu.py keeps bf16 on such CPUs: it measured the SD v1.4 UNet step 2.3 to
    2.9 times faster than fp32 and the final image at SSIM 0.999 against fp32's at the
    same seed. channels_last stays off: within the noise of the same run in fp32 and
    bf16. The thread count is left to torch (OMP_NUM_THREADS): on a loaded host one
    thread beat two, so it is a deployment choice, not a code default.
    """
    chosen_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        if chosen_device.startswith("cuda"):
            chosen_dtype = torch.float16
        elif cpu_has_native_bf16():
            chosen_dtype = torch.bfloat16
        else:
            chosen_dtype = torch.float32
    elif dtype in DTYPES:
        chosen_dtype = DTYPES[dtype]
    else:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return Placement(chosen_device, chosen_dtype, bool(channels_last))


NO_CUDA = "this worker has no CUDA device"
NO_NATIVE_BF16 = (
    "this worker's CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs "
    "about 50 times slower than fp32"
)
NO_CPU_FP16 = "PyTorch's CPU fp16 kernels run about 100 times slower than fp32"


def placement_refusal(device: str, dtype: str) -> str | None:
    """Why this process will not run in ``device`` and ``dtype`` (names as
    ``placement_record`` writes them), or None when it will."""
    if dtype not in DTYPES:
        return f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}"
    if device.startswith("cuda"):
        return None if torch.cuda.is_available() else NO_CUDA
    if device != "cpu":
        return f"device must be cpu or cuda, got {device!r}"
    if dtype == "bfloat16" and not cpu_has_native_bf16():
        return NO_NATIVE_BF16
    return NO_CPU_FP16 if dtype == "float16" else None


def dtype_name(dtype: torch.dtype) -> str:
    """ "bfloat16" for torch.bfloat16: the name DTYPES and XRAY_DTYPE use."""
    return str(dtype).removeprefix("torch.")


def placement_record(pipe: StableDiffusionPipeline) -> dict[str, str]:
    """Where ``pipe`` runs, as a generation records it: the device type, the UNet's
    dtype, and the torch and diffusers versions (each of these can move pixels)."""
    weight = next(pipe.unet.parameters())  # cheaper than walking every module
    return {
        "device": weight.device.type,
        "dtype": dtype_name(weight.dtype),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def is_local_reference(source: str) -> bool:
    """True when ``source`` names a path rather than a Hub id like ``org/name``."""
    return (
        Path(source).exists()
        or source.startswith(("/", "./", "../", "~"))
        or source.endswith(SINGLE_FILE_SUFFIXES)
    )


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time: no download is attempted when it is set."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def is_reachable(source: str, revision: str | None = None) -> bool:
    """Whether ``load_pipeline(source)`` can find its files without failing.

    A folder needs model_index.json, a file must exist; a Hub id is reachable when
    downloads are allowed or its model_index.json is in the local cache.
    """
    if is_local_reference(source):
        path = Path(source).expanduser()
        return (
            path.is_file()
            if path.suffix in SINGLE_FILE_SUFFIXES
            else (path / "model_index.json").is_file()
        )
    if not hub_offline():
        return True
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(
        source, "model_index.json", revision=revision or DEFAULT_REVISION
    )
    return isinstance(cached, str)


def load_pipeline(
    source: str = DEFAULT_HUB_ID,
    *,
    revision: str | None = None,
    placement: Placement | None = None,
    single_file_config: str | None = None,
) -> StableDiffusionPipeline:
    """Load SD v1.x from a Hub id, a diffusers folder, or a single checkpoint file.

    Raises ModelNotFoundError naming what was looked for when it is not there.
    """
    placement = placement or pick_placement()
    common = {
        "dtype": placement.dtype,
        # The safety checker is a CLIP classifier for natural-image NSFW content: on
        # grayscale radiographs it blacks out images at random, and it costs a CLIP-L
        # forward per image. The outputs are marked synthetic and not for diagnosis.
        "safety_checker": None,
        "requires_safety_checker": False,
    }
    if is_local_reference(source):
        pipe = _load_local(Path(source).expanduser(), common, single_file_config)
    else:
        pipe = _load_from_hub(source, revision or DEFAULT_REVISION, common)
    return prepare_pipeline(pipe, placement)


def _load_local(
    path: Path, common: dict, single_file_config: str | None
) -> StableDiffusionPipeline:
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelNotFoundError(MISSING_FILE.format(path=path))
        return StableDiffusionPipeline.from_single_file(
            str(path), config=single_file_config, **common
        )
    if not path.is_dir():
        raise ModelNotFoundError(MISSING_FOLDER.format(path=path))
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(NOT_A_PIPELINE.format(path=path))
    return StableDiffusionPipeline.from_pretrained(str(path), **common)


def _load_from_hub(source: str, revision: str, common: dict) -> StableDiffusionPipeline:
    offline = hub_offline()
    try:
        return StableDiffusionPipeline.from_pretrained(
            source, revision=revision, local_files_only=offline, **common
        )
    except (OSError, ValueError) as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelNotFoundError(
            HUB_UNAVAILABLE.format(
                source=source,
                revision=revision,
                cache=HF_HUB_CACHE,
                mode="off (HF_HUB_OFFLINE=1)" if offline else "on but failed",
                reason=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
        ) from exc


def prepare_pipeline(
    pipe: StableDiffusionPipeline, placement: Placement
) -> StableDiffusionPipeline:
    """Move to the device, use PyTorch SDPA attention, decode one image at a time
    (so a large batch never holds every image's VAE activations at once), and
    silence the progress bar."""
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.vae.enable_slicing()
    pipe.to(placement.device)
    if placement.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe
