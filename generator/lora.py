"""LoRA adapters on a loaded pipeline: load once, switch and scale in place, fuse.

Adapters are named after their file's sha256, so the same file is never loaded twice
and switching between adapters never reloads the base weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from diffusers import StableDiffusionPipeline

MISSING_ADAPTER = "No LoRA file at {path}."
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_name(sha256: str) -> str:
    return f"lora_{sha256[:16]}"


def loaded_adapters(pipe: StableDiffusionPipeline) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def ensure_adapter(
    pipe: StableDiffusionPipeline, path: Path, sha256: str | None = None
) -> str:
    """Load the adapter at ``path`` unless it is already loaded; return its name.

    Accepts the diffusers/peft safetensors that training saves and kohya-style files
    that diffusers' ``load_lora_weights`` converts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(MISSING_ADAPTER.format(path=path))
    name = adapter_name(sha256 or sha256_file(path))
    if name not in loaded_adapters(pipe):
        pipe.load_lora_weights(
            str(path.parent), weight_name=path.name, adapter_name=name
        )
    return name


def activate_adapter(
    pipe: StableDiffusionPipeline, name: str | None, scale: float = 1.0
) -> None:
    """Make ``name`` the only active adapter at ``scale``; ``None``: the bare base."""
    if not loaded_adapters(pipe):
        return
    if name is None:
        pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters([name], adapter_weights=[scale])


def fuse_adapter(pipe: StableDiffusionPipeline, name: str, scale: float = 1.0) -> None:
    """Fold one adapter into the base weights and drop the LoRA layers.

    For a worker that serves a single adapter: sampling then costs what the base costs.
    """
    pipe.set_adapters([name], adapter_weights=[scale])
    pipe.fuse_lora(adapter_names=[name], lora_scale=1.0)
    pipe.unload_lora_weights()
