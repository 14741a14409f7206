"""The training world: flat gray cases whose caption names the shade, the tiny model
version, and a recorder for broker messages."""

from __future__ import annotations

import io

import pytest
import torch
from django.core.files.base import ContentFile
from PIL import Image

from generator.training import TrainingExample
from tests.training.data import SHADES, gray_examples
from xrayweb.cases.models import Case, CaseImage, Source, Split, View


@pytest.fixture
def examples() -> list[TrainingExample]:
    return gray_examples()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads spin and run ~10x
    slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def png(shade: int, size: int = 32) -> ContentFile:
    buffer = io.BytesIO()
    Image.new("L", (size, size), shade).save(buffer, format="PNG")
    return ContentFile(buffer.getvalue())


def make_case(
    uid: str, prompt: str, shade: int, split: str = Split.TRAIN, lateral: bool = False
) -> Case:
    """A case with a flat frontal derivative (and a lateral one if asked)."""
    case = Case.objects.create(
        uid=uid,
        source=Source.OPENI,
        prompt=prompt,
        split=split,
        mesh_major=[prompt.split()[0]],
    )
    views = [View.FRONTAL, View.LATERAL] if lateral else [View.FRONTAL]
    for number, view in enumerate(views):
        image = CaseImage(case=case, image_id=f"{uid}_{number}", view=view)
        image.width = image.height = 32
        image.derivative.save(f"{uid}_{number}.png", png(shade), save=False)
        image.save()
    return case


@pytest.fixture
def train_cases(db, media_root) -> list[Case]:
    """Four train cases (two shades), one with a lateral, and one test case."""
    cases = [
        make_case(f"T{i}", caption, SHADES[caption], lateral=i == 0)
        for i, caption in enumerate(list(SHADES) * 2)
    ]
    make_case("X1", "dark chest", 40, split=Split.TEST)
    return cases


RUN_CONFIG = {
    "resolution": 32,
    "rank": 4,
    "alpha": 4,
    "batch_size": 2,
    "epochs": 2,
    "learning_rate": 1e-2,
    "validation_size": 2,
    "checkpoint_every": 1,
}
