"""The mini model: the patient split, the training data, and the committed artefact."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from generator.errors import InvalidParameterError
from generator.loading import load_pipeline, pick_placement
from generator.mini import (
    ARCHITECTURES,
    PLANS,
    RESOLUTION,
    MiniTrainingPlan,
    build_mini_pipeline,
    read_records,
    split_by_patient,
    stage_log,
    train_decoder_stage,
    train_mini,
    train_vae_stage,
    training_examples,
)
from generator.sampling import GenerationParams, generate
from generator.training import TrainingExample, example_tensors
from tests.training.data import Interrupted, interrupt_at

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = PROJECT_ROOT / "models" / "mini-cxr"
MAX_MODEL_BYTES = 50 * 1024 * 1024
needs_model = pytest.mark.skipif(
    not (MODEL_DIR / "model_index.json").is_file(), reason="models/mini-cxr not built"
)


def write_public_cxr(root: Path, patients: int, per_patient: int = 2) -> Path:
    """A public-cxr-shaped folder: labels.csv and seeded random 64² images."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "text", "labels", "view", "patient_id", "source"])
        for patient in range(patients):
            for index in range(per_patient):
                name = f"p{patient}_{index}.png"
                pixels = rng.integers(0, 256, (RESOLUTION, RESOLUTION), np.uint8)
                Image.fromarray(pixels, mode="L").save(root / "images" / name)
                view = "AP" if patient % 2 else "PA"
                text = f"{view} chest radiograph of a 50-year-old male: no finding"
                writer.writerow([name, text, "No Finding", view, patient, "nih"])
    return root


def test_it_holds_out_whole_patients(tmp_path):
    records = read_records(write_public_cxr(tmp_path, patients=20, per_patient=3))

    split = split_by_patient(records, fraction=0.1)

    held = {r.patient_id for r in split.heldout}
    assert len(held) == 2
    assert len(split.heldout) == 6
    assert held.isdisjoint(r.patient_id for r in split.train)
    assert split == split_by_patient(records, fraction=0.1)


def test_it_adds_empty_caption_copies_for_guidance(tmp_path):
    records = read_records(write_public_cxr(tmp_path, patients=10))

    examples = training_examples(records, unconditional_fraction=0.25)

    assert len(examples) == 25
    assert [e.caption for e in examples].count("") == 5


def test_it_refuses_a_folder_without_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"labels\.csv"):
        read_records(tmp_path)


def test_it_trains_in_rounds_and_resumes_into_a_loadable_model(tmp_path):
    data = write_public_cxr(tmp_path / "data", patients=5)
    plan = MiniTrainingPlan(
        vae_epochs=1,
        vae_batch_size=4,
        batch_size=4,
        max_steps=2,
        rounds=2,
        checkpoint_every=1,
        sample_steps=1,
    )

    first = train_mini(data, tmp_path / "model", tmp_path / "work", plan)
    again = train_mini(data, tmp_path / "model", tmp_path / "work", plan)

    assert [result.steps for result in first.rounds] == [2, 2]
    assert [result.resumed_from for result in again.rounds] == [2, 2]
    assert [r.weights_digest for r in again.rounds] == [
        r.weights_digest for r in first.rounds
    ]
    assert first.rounds[0].weights_digest != first.rounds[1].weights_digest
    assert first.vae["steps"] == 3
    assert again.vae == first.vae
    pipe = load_pipeline(str(tmp_path / "model"), placement=pick_placement("cpu"))
    image = generate(pipe, small_request()).images[0]
    assert image.size == (RESOLUTION, RESOLUTION)


def test_it_resumes_an_interrupted_vae_stage_to_the_same_weights(tmp_path):
    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    plan = MiniTrainingPlan(vae_epochs=2, vae_batch_size=4, checkpoint_every=1)

    straight, _ = train_vae_stage(records, plan, tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_vae_stage(records, plan, tmp_path / "resumed", interrupt_at(3))
    resumed, record = train_vae_stage(records, plan, tmp_path / "resumed")

    assert record["steps"] == 4
    vae = "vae/diffusion_pytorch_model.safetensors"
    want, got = load_file(straight / vae), load_file(resumed / vae)
    assert all(torch.equal(want[key], got[key]) for key in want)


def test_it_resumes_a_vae_stage_on_random_crops_to_the_same_weights(tmp_path):
    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    plan = MiniTrainingPlan(
        vae_epochs=2, vae_batch_size=4, checkpoint_every=1, vae_crop_size=32
    )

    straight, _ = train_vae_stage(records, plan, tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_vae_stage(records, plan, tmp_path / "resumed", interrupt_at(3))
    resumed, _ = train_vae_stage(records, plan, tmp_path / "resumed")
    uncropped, _ = train_vae_stage(
        records, MiniTrainingPlan(vae_epochs=2, vae_batch_size=4), tmp_path / "whole"
    )

    vae = "vae/diffusion_pytorch_model.safetensors"
    want, got = load_file(straight / vae), load_file(resumed / vae)
    assert all(torch.equal(want[key], got[key]) for key in want)
    whole = load_file(uncropped / vae)
    assert not all(torch.equal(want[key], whole[key]) for key in want)


def test_its_vae_kl_weight_sets_how_far_the_latents_stray_from_the_prior(tmp_path):
    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    x = example_tensors([TrainingExample(r.path, "") for r in records[:4]], 64)

    def kl_after_training(kl_weight: float) -> float:
        plan = MiniTrainingPlan(vae_epochs=6, vae_batch_size=4, vae_kl_weight=kl_weight)
        folder, _ = train_vae_stage(records, plan, tmp_path / f"kl-{kl_weight}")
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"))
        with torch.no_grad():
            return vae.encode(x).latent_dist.kl().mean().item()

    assert kl_after_training(1e-1) < 0.5 * kl_after_training(1e-9)


def test_it_tunes_the_decoder_alone_so_the_latents_stay_where_they_were(tmp_path):
    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    plan = MiniTrainingPlan(
        vae_epochs=1, vae_batch_size=4, decoder_epochs=1, vae_crop_size=32
    )
    base, _ = train_vae_stage(records, plan, tmp_path / "work")

    tuned, record = train_decoder_stage(records, plan, tmp_path / "work", base)

    vae = "vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(base / vae), load_file(tuned / vae)
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not all(torch.equal(before[k], after[k]) for k in decoder)
    factors = [
        json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]
        for folder in (base, tuned)
    ]
    assert factors[0] == factors[1]
    assert record["steps"] == 2


def test_its_decoder_stage_against_a_discriminator_resumes_to_the_same_weights(
    tmp_path,
):
    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    plan = MiniTrainingPlan(
        vae_epochs=1,
        vae_batch_size=4,
        vae_crop_size=32,
        decoder_epochs=2,
        checkpoint_every=1,
        decoder_adversarial_weight=0.5,
        decoder_adversarial_start=1,
        decoder_feature_matching_weight=1.0,
    )
    base, _ = train_vae_stage(records, plan, tmp_path / "base")

    straight, record = train_decoder_stage(records, plan, tmp_path / "straight", base)
    with pytest.raises(Interrupted):
        train_decoder_stage(records, plan, tmp_path / "resumed", base, interrupt_at(3))
    resumed, _ = train_decoder_stage(records, plan, tmp_path / "resumed", base)
    plain, _ = train_decoder_stage(
        records,
        replace(
            plan, decoder_adversarial_weight=0.0, decoder_feature_matching_weight=0
        ),
        tmp_path / "plain",
        base,
    )

    vae = "vae/diffusion_pytorch_model.safetensors"
    want, got = load_file(straight / vae), load_file(resumed / vae)
    assert all(torch.equal(want[k], got[k]) for k in want)
    without = load_file(plain / vae)
    assert not all(torch.equal(want[k], without[k]) for k in want)
    assert record["steps"] == 4
    checkpoint = sorted((tmp_path / "straight" / "decoder-run").rglob("state.pt"))[-1]
    state = torch.load(checkpoint, weights_only=True)
    assert [step for step, _ in state["state"]["disc_history"]] == [1, 2, 3, 4]
    assert state["discriminator"]


def test_it_refuses_feature_matching_without_a_discriminator():
    plan = MiniTrainingPlan(decoder_epochs=1, decoder_feature_matching_weight=1.0)

    with pytest.raises(InvalidParameterError, match=r"vae_adversarial_weight is 0\.0"):
        plan.decoder_config(Path("b"), Path("w"))


# Trains the mini model in a child process, as the background command does.
CHILD = """
import sys
from pathlib import Path
from generator.mini import MiniTrainingPlan, train_mini
plan = MiniTrainingPlan(vae_epochs=1, vae_batch_size=4, batch_size=4, max_steps=20,
    rounds=1, checkpoint_every=1, sample_steps=1, cache_latents=True)
train_mini(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), plan)
"""


@pytest.mark.slow
def test_it_continues_after_the_training_process_is_killed(tmp_path):
    data = write_public_cxr(tmp_path / "data", patients=5)
    plan = MiniTrainingPlan(
        vae_epochs=1,
        vae_batch_size=4,
        batch_size=4,
        max_steps=20,
        rounds=1,
        checkpoint_every=1,
        sample_steps=1,
        cache_latents=True,
    )
    work = tmp_path / "work"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(tmp_path / "killed"), str(work)],
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    checkpoints = work / "unet-run-1" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("checkpoint-*/state.pt")):
        assert child.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()

    resumed = train_mini(data, tmp_path / "resumed", work, plan)
    straight = train_mini(data, tmp_path / "straight", tmp_path / "straight-work", plan)

    assert 0 < resumed.rounds[0].resumed_from < 20
    assert resumed.rounds[0].weights_digest == straight.rounds[0].weights_digest
    assert resumed.rounds[0].loss_history == straight.rounds[0].loss_history
    events = [(line["stage"], line["event"]) for line in stage_log(work)]
    assert events[:3] == [("vae", "start"), ("vae", "end"), ("unet-round-1", "start")]
    assert events[-2:] == [("unet-round-1", "start"), ("unet-round-1", "end")]
    summary = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert summary["invocations"][-1]["resumed_from"] == resumed.rounds[0].resumed_from


def test_it_builds_v2_at_128_with_a_4x_vae_and_32_square_latents(clip_tokenizer):
    v2 = ARCHITECTURES["v2"]
    pipe = build_mini_pipeline(seed=0, tokenizer=clip_tokenizer, architecture=v2)
    request = GenerationParams(
        prompt="PA chest radiograph", width=128, height=128, steps=1, seed=1
    )

    image = generate(pipe, request).images[0]

    assert (pipe.vae_scale_factor, pipe.unet.config.sample_size) == (4, 32)
    channels = (pipe.unet.config.in_channels, pipe.unet.config.out_channels)
    assert channels == (4, 4) == (pipe.vae.config.latent_channels,) * 2
    # No attention at the top level, where 32² latents would make it 1,024 tokens.
    assert pipe.unet.config.down_block_types[0] == "DownBlock2D"
    assert image.size == (128, 128) == (v2.resolution, v2.resolution)
    assert PLANS["v2"].shape is v2
    assert PLANS["v2"].vae_config(Path("b"), Path("w")).vae_crop_size == 64


def test_its_command_can_stop_after_the_vae_stage(tmp_path, capsys):
    from generator.mini import add_arguments, run_from_arguments

    data = write_public_cxr(tmp_path / "data", patients=4)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    paths = ["--data", str(data), "--out", str(tmp_path / "model")]
    paths += ["--work", str(tmp_path / "work")]
    args = parser.parse_args([*paths, "--vae-epochs", "1", "--vae-only"])

    assert run_from_arguments(args) is None
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n") :])
    assert (tmp_path / "work" / "vae-stage" / "vae" / "config.json").is_file()
    assert not (tmp_path / "model").exists()  # no UNet stage, no artefact
    assert [e["stage"] for e in stage_log(tmp_path / "work")] == ["vae", "vae"]
    assert printed["steps"] >= 1


def test_its_command_runs_the_decoder_stage_before_stopping_when_planned(
    tmp_path, capsys
):
    from generator.mini import add_arguments, run_from_arguments

    data = write_public_cxr(tmp_path / "data", patients=4)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    paths = ["--data", str(data), "--out", str(tmp_path / "model")]
    paths += ["--work", str(tmp_path / "work")]
    options = ["--vae-epochs", "1", "--decoder-epochs", "1", "--vae-only"]

    run_from_arguments(parser.parse_args([*paths, *options]))

    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n") :])
    assert printed["vae_stage"] == str(tmp_path / "work" / "decoder-stage")
    assert printed["decoder_stage"]["steps"] >= 1
    events = [(e["stage"], e["event"]) for e in stage_log(tmp_path / "work")]
    assert events == [
        ("vae", "start"),
        ("vae", "end"),
        ("decoder", "start"),
        ("decoder", "end"),
    ]


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from generator.mini import cpu_precision

    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(
            torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n
        )
        assert cpu_precision("auto") == expected
        assert PLANS["v2"].vae_config(Path("b"), Path("w")).mixed_precision == expected
    assert cpu_precision("bf16") == "bf16"
    assert cpu_precision("no") == "no"


def test_it_starts_from_a_finished_vae_instead_of_training_one(tmp_path):
    from generator.mini import adopt_vae_stage, save_half_precision

    records = read_records(write_public_cxr(tmp_path / "data", patients=4))
    plan = MiniTrainingPlan(vae_epochs=1, vae_batch_size=4)
    trained, record = train_vae_stage(records, plan, tmp_path / "first")
    committed = save_half_precision(trained, tmp_path / "committed")
    (committed / "vae-stage.json").write_text(json.dumps(record))

    folder, adopted = adopt_vae_stage(
        committed, replace(plan, vae_from=str(committed)), tmp_path / "second"
    )

    vae = "vae/diffusion_pytorch_model.safetensors"
    want, got = load_file(committed / vae), load_file(folder / vae)
    assert all(torch.equal(want[key].float(), got[key]) for key in want)
    assert adopted == {**record, "adopted_from": str(committed)}
    wrong = (
        r"4 latent channels and blocks \(16, 32, 64\); "
        r"architecture v2 needs 4 and \(32, 64, 128\)"
    )
    with pytest.raises(InvalidParameterError, match=wrong):
        adopt_vae_stage(committed, PLANS["v2"], tmp_path / "wrong")


def test_its_command_sets_the_vae_precision_for_a_cpu_without_bf16():
    from generator.mini import add_arguments, plan_from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["--data", "d", "--out", "o", "--version", "v2"]

    assert plan_from_arguments(parser.parse_args(given)).vae_mixed_precision == "auto"
    chosen = parser.parse_args([*given, "--vae-precision", "no"])
    assert plan_from_arguments(chosen).vae_mixed_precision == "no"
    with pytest.raises(SystemExit):
        parser.parse_args([*given, "--vae-precision", "fp8"])


def test_its_command_sets_the_vae_kl_weight():
    from generator.mini import add_arguments, plan_from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["--data", "d", "--out", "o", "--version", "v2"]

    assert plan_from_arguments(parser.parse_args(given)).vae_kl_weight == 1e-6
    chosen = parser.parse_args([*given, "--vae-kl-weight", "1e-9"])
    plan = plan_from_arguments(chosen)
    assert plan.vae_config(Path("b"), Path("w")).kl_weight == 1e-9


def test_its_v2_unet_stage_saves_a_moving_average_unless_told_not_to():
    from generator.mini import add_arguments, plan_from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["--data", "d", "--out", "o", "--version", "v2"]

    plan = plan_from_arguments(parser.parse_args(given))
    assert plan.unet_config(Path("b"), Path("w"), 0).ema_decay == 0.999
    assert PLANS["v1"].unet_config(Path("b"), Path("w"), 0).ema_decay == 0.0
    chosen = plan_from_arguments(parser.parse_args([*given, "--ema-decay", "0"]))
    assert chosen.unet_config(Path("b"), Path("w"), 0).ema_decay == 0.0


def small_request() -> GenerationParams:
    return GenerationParams(
        prompt="PA chest radiograph of a 60-year-old male: no finding",
        width=RESOLUTION,
        height=RESOLUTION,
        steps=3,
        guidance_scale=3.0,
        seed=11,
    )


@needs_model
def test_it_loads_the_committed_mini_model_and_generates_deterministically():
    pipe = load_pipeline(str(MODEL_DIR), placement=pick_placement("cpu"))
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor

    first = generate(pipe, small_request()).images[0]
    second = generate(pipe, small_request()).images[0]

    assert native == RESOLUTION
    assert first.mode == "L"
    assert first.size == (native, native)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert np.asarray(first).std() > 5  # a picture, not a flat field


@needs_model
def test_it_keeps_the_committed_mini_model_small():
    total = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())

    assert total <= MAX_MODEL_BYTES


V2_DIR = PROJECT_ROOT / "models" / "mini-cxr-v2"
needs_v2_vae = pytest.mark.skipif(
    not (V2_DIR / "vae" / "config.json").is_file(),
    reason="models/mini-cxr-v2/vae not committed",
)


@needs_v2_vae
def test_the_committed_v2_vae_starts_a_v2_run_and_round_trips_a_radiograph(
    tmp_path,
):
    from generator.mini import adopt_vae_stage

    plan = replace(PLANS["v2"], vae_from=str(V2_DIR))
    folder, record = adopt_vae_stage(V2_DIR, plan, tmp_path / "work")
    pipe = load_pipeline(str(folder), placement=pick_placement("cpu"))
    # A smooth chest-like picture: bright mediastinum, darker lungs, soft edges.
    y, x = np.mgrid[-1:1:128j, -1:1:128j]
    lungs = np.exp(-(((np.abs(x) - 0.45) / 0.25) ** 2 + (y / 0.6) ** 2))
    gray = 200 - 120 * lungs
    pixels = torch.tensor(gray / 127.5 - 1, dtype=torch.float32).expand(1, 3, -1, -1)

    with torch.no_grad():  # in the placement's dtype: bfloat16 where the CPU has it
        latents = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.float().clamp(-1, 1)

    assert latents.shape == (1, 4, 32, 32)
    error = ((decoded - pixels) * 127.5).pow(2).mean().item()
    assert 10 * np.log10(255**2 / error) > 25  # dB: the picture comes back
    assert record["steps"] == PLANS["v2"].vae_epochs * -(-1003 // 16)
    assert record["adopted_from"] == str(V2_DIR)
    vae_bytes = sum(p.stat().st_size for p in (V2_DIR / "vae").rglob("*"))
    assert vae_bytes <= 10 * 1024 * 1024
