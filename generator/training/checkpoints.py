"""Checkpoints: one format for every stage, and the saved result.

A checkpoint is ``<output_dir>/<stage folder>/checkpoint-<step>/state.pt``: the
trainable weights, the optimiser and learning-rate scheduler states, the moving
average of the weights where the run keeps one, and the loop's state (step, loss
histories), written with ``torch.save`` to a side file and renamed
into place, so a kill never leaves half a file. The diffusion stage keeps its
checkpoints in ``checkpoints/``, the VAE stage in ``vae-checkpoints/``.

No random-number-generator state is saved because none is carried between steps:
the data order of an epoch comes from ``seed + epoch`` and the noise, timesteps and
crops of a step from a generator seeded by the step (``seed_of``), so a resumed run
replays exactly what an uninterrupted one draws.

Reading is ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain values. accelerate's ``save_state`` / ``load_state`` are deliberately not used:
accelerate 1.15.0 reads its own state files with ``torch.load(weights_only=False)``,
so a planted file would run code on the worker (issue 17; a test in
tests/training/test_checkpoints.py scans the code for those calls).
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict

from generator.errors import UnsafeCheckpointError
from generator.training.config import TrainingConfig

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_FILE = "state.pt"
CHECKPOINTS = "checkpoints"
VAE_CHECKPOINTS = "vae-checkpoints"
UNSAFE_CHECKPOINT = (
    "checkpoint {path} holds more than tensors and plain values; it was not "
    "loaded ({reason})"
)


def checkpoint_dirs(output_dir: Path, stage: str = CHECKPOINTS) -> list[Path]:
    """A stage's checkpoint folders, oldest first."""
    folder = output_dir / stage
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if path.name.startswith(CHECKPOINT_PREFIX)
        and (path / CHECKPOINT_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]))


def write_checkpoint(
    output_dir: Path, stage: str, step: int, payload: dict, keep: int
) -> Path:
    """Write ``<stage>/checkpoint-<step>/state.pt``; keep the newest ``keep``."""
    folder = output_dir / stage / f"{CHECKPOINT_PREFIX}{step}"
    folder.mkdir(parents=True, exist_ok=True)
    written = folder / CHECKPOINT_FILE
    save_atomically(payload, written)
    for old in checkpoint_dirs(output_dir, stage)[:-keep]:
        (old / CHECKPOINT_FILE).unlink()
        old.rmdir()
    return written


def latest_checkpoint(output_dir: Path, stage: str = CHECKPOINTS) -> dict | None:
    """The newest checkpoint of ``stage``, read safely; None if there is none."""
    found = checkpoint_dirs(output_dir, stage)
    return load_checkpoint(found[-1] / CHECKPOINT_FILE) if found else None


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save to a side file, then rename: a kill never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's tensors and plain values (``torch.load(weights_only=True)``):
    a file holding anything else, such as a pickle that would run code, is refused
    naming the file, before any of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0]
        raise UnsafeCheckpointError(
            UNSAFE_CHECKPOINT.format(
                path=f"{path.parent.name}/{path.name}", reason=reason
            )
        ) from None


class CheckpointClock:
    """Says when a checkpoint is due: every ``every`` steps, and once ``minutes``
    have passed since the last one (either rule off at 0)."""

    def __init__(self, every: int, minutes: float) -> None:
        self.every, self.seconds = every, minutes * 60
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        by_step = bool(self.every) and step % self.every == 0
        by_time = bool(self.seconds) and time.monotonic() - self.last >= self.seconds
        return by_step or by_time

    def saved(self) -> None:
        self.last = time.monotonic()


def trainable_state(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The weights that train, by module: what a checkpoint must hold."""
    return {
        f"{module_name}.{name}": param.detach().cpu().clone()
        for module_name in ("unet", "text_encoder")
        for name, param in getattr(pipe, module_name).named_parameters()
        if param.requires_grad
    }


def save_checkpoint(
    output_dir: Path,
    accelerator: Accelerator,
    pipe: StableDiffusionPipeline,
    optimizer: object,
    lr_scheduler: object,
    state: dict,
    keep: int,
    with_vae: bool = False,
    ema: EMAModel | None = None,
) -> Path | None:
    """Write the diffusion stage's ``checkpoints/checkpoint-<step>/state.pt``
    (main process); its path there, None on the other processes."""
    accelerator.wait_for_everyone()
    written = None
    if accelerator.is_main_process:
        payload = {
            "weights": trainable_state(pipe),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "state": state,
        }
        if ema is not None:  # the average's tensors and its plain settings
            payload["ema"] = ema.state_dict()
        if with_vae:  # a resumed run must not train the VAE again
            payload["vae"] = {
                "weights": pipe.vae.state_dict(),
                "scaling_factor": pipe.vae.config.scaling_factor,
            }
        written = write_checkpoint(
            output_dir, CHECKPOINTS, state["step"], payload, keep
        )
    accelerator.wait_for_everyone()
    return written


def restore_vae(output_dir: Path, pipe: StableDiffusionPipeline) -> bool:
    """Load the trained VAE from the newest checkpoint; False if it holds none."""
    payload = latest_checkpoint(output_dir)
    if payload is None or "vae" not in payload:
        return False
    pipe.vae.load_state_dict(payload["vae"]["weights"])
    pipe.vae.register_to_config(scaling_factor=payload["vae"]["scaling_factor"])
    return True


def load_latest_checkpoint(
    output_dir: Path,
    pipe: StableDiffusionPipeline,
    optimizer: object,
    lr_scheduler: object,
    state: dict,
    ema: EMAModel | None = None,
) -> int:
    """Restore the newest checkpoint into the models, ``state`` and ``ema``; return
    its step. A checkpoint written without an average starts ``ema`` at its
    weights."""
    payload = latest_checkpoint(output_dir)
    if payload is None:
        return 0
    params = {
        f"{module_name}.{name}": param
        for module_name in ("unet", "text_encoder")
        for name, param in getattr(pipe, module_name).named_parameters()
    }
    with torch.no_grad():
        for name, value in payload["weights"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    lr_scheduler.load_state_dict(payload["lr_scheduler"])
    state.update(payload["state"])
    if ema is not None:
        if "ema" in payload:
            ema.load_state_dict(payload["ema"])
        else:
            trained = [p for p in params.values() if p.requires_grad]
            ema.shadow_params = [p.detach().clone() for p in trained]
            ema.optimization_step = state["step"]
    return state["step"]


def save_result(
    pipe: StableDiffusionPipeline, config: TrainingConfig, output_dir: Path
) -> tuple[Path | None, Path | None]:
    """Save diffusers-format LoRA safetensors (adapter keys only) or the pipeline."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.mode == "full":
        folder = output_dir / "pipeline"
        pipe.scheduler.register_to_config(
            prediction_type=config.prediction_type
            or pipe.scheduler.config.prediction_type
        )
        pipe.save_pretrained(str(folder), safe_serialization=True)
        return None, folder
    text_layers = None
    if config.train_text_encoder:
        text_layers = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder)
        )
    StableDiffusionPipeline.save_lora_weights(
        str(output_dir),
        unet_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.unet)
        ),
        text_encoder_lora_layers=text_layers,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
    return output_dir / LORA_WEIGHT_NAME, None


def weights_digest(parameters: Sequence[torch.nn.Parameter]) -> str:
    """sha256 over the trainable weights' bytes: equal on every rank after DDP."""
    digest = hashlib.sha256()
    for param in parameters:
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
