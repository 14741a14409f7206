"""The mini model: the patient split, the training data, and the committed artefact."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from generator.loading import load_pipeline, pick_placement
from generator.mini import (
    RESOLUTION,
    MiniTrainingPlan,
    read_records,
    split_by_patient,
    train_mini,
    train_vae_stage,
    training_examples,
)
from generator.sampling import GenerationParams, generate
from tests.training.data import Interrupted, interrupt_at

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "mini-cxr"
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
