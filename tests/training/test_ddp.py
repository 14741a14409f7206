"""Two CPU processes with the gloo backend end with identical LoRA weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train.py")


@pytest.mark.slow
def test_it_ends_both_ranks_with_identical_lora_weights(tiny_model_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    finished = subprocess.run(
        [*command, str(tiny_model_dir), str(tmp_path)],
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0][:2] == ["2", "4"]  # world size 2; 8 examples / 2 ranks / batch 2
    assert ranks[0] == ranks[1]
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
