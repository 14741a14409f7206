"""bench/sd_gpu.py: the CUDA path's script works, and says so where there is none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, TOKENIZER_DIR, require_shared

VARIANTS = ["classic", "sdpa", "sdpa+channels_last", "sdpa+lora", "sdpa+lora fused"]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/sd_gpu.py", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_it_says_there_is_no_cuda_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the bench would run for real")
    done = run_bench()
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == "No CUDA device here: bench/sd_gpu.py measures the CUDA path only."
    )


@pytest.mark.slow
def test_it_times_every_variant_at_every_batch_on_the_cpu_smoke_run():
    require_shared(TOKENIZER_DIR / "vocab.json")
    done = run_bench("--cpu-smoke")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for variant in VARIANTS:
        for batch in (1, 2):
            timed = [
                line
                for line in lines
                if line.startswith(f"batch {batch}  {variant:<20} ")
                and "s per call" in line
            ]
            assert len(timed) == 1, (variant, batch, done.stdout)
    speedups = [line for line in lines if line.endswith("x classic")]
    assert len(speedups) == 2 * (len(VARIANTS) - 1)
