"""The plain-Python pieces: placeholders, splits, ids, images, limits, merging."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator.iuxray import images, records, safetar, splits, text
from tests.cases.conftest import make_tar, png_bytes, report_xml
from xrayweb.cases.models import Case


@pytest.mark.parametrize(
    ("raw", "prompt"),
    [
        ("Normal chest x-XXXX.", "Normal chest."),
        ("Heart size normal. XXXX XXXX are intact.", "Heart size normal. are intact."),
        ("XXXX-year-old male, chest pain.", "male, chest pain."),
        ("No acute disease.", "No acute disease."),
    ],
)
def test_it_drops_placeholder_words_from_the_prompt_only(raw, prompt):
    assert text.strip_placeholders(raw) == prompt


def test_it_splits_by_patient_deterministically():
    keys = [f"CXR{n}" for n in range(1, 4001)]
    first = [splits.split_for(k, seed=5) for k in keys]

    assert first == [splits.split_for(k, seed=5) for k in keys]
    assert first != [splits.split_for(k, seed=6) for k in keys]
    assert 0.77 < first.count("train") / len(keys) < 0.83
    assert 0.08 < first.count("test") / len(keys) < 0.12


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CXR1_1_IM-0001-3001.png", ("CXR1_IM-0001-3001", "CXR1")),
        ("1000_IM-0003-1001.dcm.png", ("CXR1000_IM-0003-1001", "CXR1000")),
        ("21_IM-0729-1001-0001.dcm.png", ("CXR21_IM-0729-1001-0001", "CXR21")),
        ("CXR1000_IM-0003-2001", ("CXR1000_IM-0003-2001", "CXR1000")),
    ],
)
def test_it_normalises_image_names_across_layouts(name, expected):
    assert records.image_id_from_name(name) == expected


@pytest.mark.parametrize("raw", ["CXR", "x12", "12a", "-3", "CXR1/2", "١٢"])
def test_it_refuses_a_malformed_study_uid(raw):
    with pytest.raises(records.ItemRejected, match=repr(raw)):
        records.study_uid(raw)


def test_it_scales_a_16_bit_film_into_the_8_bit_derivative():
    pixels = (np.linspace(0, 4095, 300 * 400).reshape(400, 300)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")

    checked = images.image_check(buffer.getvalue())

    derivative = Image.open(io.BytesIO(checked.derivative_png))
    assert (derivative.size, derivative.mode) == ((256, 256), "L")
    assert np.asarray(derivative).max() > 250
    assert (checked.width, checked.height) == (300, 400)


def test_it_stops_an_archive_with_too_many_members(tmp_path: Path):
    archive = make_tar(tmp_path / "a.tgz", [(f"{n}.xml", b"<a/>") for n in range(10)])

    items = list(
        safetar.iter_tar(archive, suffix=".xml", limits=safetar.TarLimits(members=5))
    )

    assert len(items) == 6
    assert items[-1].reason == safetar.TOO_MANY.format(limit=5)


def test_it_keeps_r2gen_split_and_open_i_text_in_one_import(importer, tmp_path: Path):
    reports = make_tar(
        tmp_path / "r.tgz",
        [("1.xml", report_xml("CXR1", findings="Open-i findings."))],
    )
    r2gen = tmp_path / "r2gen"
    r2gen.mkdir()
    entry = {
        "id": "CXR1_IM-0001",
        "report": "R2Gen findings.",
        "image_path": ["CXR1_IM-0001/0.png"],
        "split": "test",
    }
    (r2gen / "annotation.json").write_text(
        json.dumps({"train": [], "val": [], "test": [entry]})
    )
    (r2gen / "images" / "CXR1_IM-0001").mkdir(parents=True)
    (r2gen / "images" / "CXR1_IM-0001" / "0.png").write_bytes(png_bytes())

    importer(reports=reports, r2gen_dir=r2gen)

    case = Case.objects.get()
    assert (case.findings, case.split, case.split_seed) == (
        "Open-i findings.",
        "test",
        None,
    )
    assert case.images.get().view == "frontal"
