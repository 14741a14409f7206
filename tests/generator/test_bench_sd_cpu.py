from __future__ import annotations

import importlib

import pytest
import torch


@pytest.mark.slow
def test_it_runs_the_cpu_bench_end_to_end_on_the_tiny_model(tmp_path, clip_tokenizer):
    """The bench's own code, on the tiny model: every section prints a figure."""
    from generator.tiny import build_tiny_pipeline

    sd_cpu = importlib.import_module("bench.sd_cpu")
    out = tmp_path / "sd_cpu.txt"
    threads = torch.get_num_threads()

    sd_cpu.main(
        ["--out", str(out), "--threads", "1"],
        build=lambda: build_tiny_pipeline(0, clip_tokenizer),
    )
    torch.set_num_threads(threads)

    text = out.read_text(encoding="utf-8")
    assert "FP32 peak estimate" in text
    assert "GFLOP/s achieved" in text
    assert "rel. error" in text
    assert "ratio platform default/prototype:" in text
    assert "ratio fastest within the SSIM bar/prototype:" in text
    assert "DeepCache every 3 steps:" in text
    assert "token merging 0.5:" in text
    assert "UniPC, 6 steps:" in text
    assert "over 6 UNet calls" in text  # the prototype: PNDM, 5 steps
