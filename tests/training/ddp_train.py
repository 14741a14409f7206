"""Train a tiny LoRA on two CPU processes (gloo); each rank writes its weights' digest.

torchrun --nproc_per_node 2 tests/training/ddp_train.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from generator.training import train
from tests.training.data import gray_examples, small_config


def main() -> None:
    torch.set_num_threads(1)
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    config = small_config(model_dir, out_dir, epochs=2)
    result = train(config, gray_examples(8))
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    (out_dir / f"rank{rank}.txt").write_text(
        f"{world} {result.steps} {result.weights_digest}\n"
    )


if __name__ == "__main__":
    main()
