"""A dataset as one ZIP, written as a stream to a local file (never the whole set in
memory): ``images/<img_savename>`` (the stored PNGs byte for byte, with their
Synthetic text chunks), ``metadata.csv`` and ``DATASHEET.md``; with DICOM asked for,
also ``dicom/<name>.dcm`` beside each ``images/<name>.png``: a Secondary Capture
marked SYN (see xrayweb.datasets.dicom), one patient, study and series per export.

metadata.csv has one row per image, with METADATA_COLUMNS and then one column per
label of an uploaded CSV (named ``label_<name>`` where a label's name is already a
column). The columns:

- ``prompt``: the prompt the image was made from (CheXGenBench's column);
- ``img_savename``: the image's file name inside ``images/`` (CheXGenBench's);
- ``annotated_prompt``: the prompt followed by its findings, `` | `` and then the
  case's MeSH terms or the CSV's labels as ``name: value`` pairs joined by ``; ``
  (CheXGenBench's column of annotated captions); the prompt alone when it has none;
- ``case_uid``, ``split``: the imported case the prompt came from, else empty;
- ``seed``: the image's own seed (the prompt's derived seed + its index);
- ``model_version``: the model version's name; ``model_sha256``: the sha256 of its
  LoRA file or trained model folder manifest, empty for a base model from the Hub
  or a shipped folder;
- ``steps``, ``guidance_scale``, ``scheduler``, ``width``, ``height``,
  ``lora_scale``, ``negative_prompt``: every other generation parameter.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from django.core.files.storage import default_storage

from xrayweb.datasets import dicom
from xrayweb.datasets.models import Dataset, DatasetImage, DatasetPrompt
from xrayweb.generations.models import ModelVersion

METADATA_COLUMNS = (
    "prompt",
    "img_savename",
    "annotated_prompt",
    "case_uid",
    "split",
    "seed",
    "model_version",
    "model_sha256",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "lora_scale",
    "negative_prompt",
)
MODEL_CARD = "MODEL_CARD.md"
ATTRIBUTION = (
    "The models were trained on the IU X-ray collection (Open-i, NLMCXR), licensed "
    "CC BY-NC-ND 4.0 by Indiana University and the U.S. National Library of "
    "Medicine; cite Demner-Fushman D. et al., JAMIA 2016;23(2):304-310."
)
COPY_CHUNK = 1 << 20


class ExportStopped(Exception):
    """Cancel was asked for, or another attempt holds the export."""


def label_columns(dataset: Dataset) -> list[str]:
    """The uploaded CSV's label names, in the order they first appear."""
    names: dict[str, None] = {}
    for labels in dataset.prompts.exclude(labels={}).values_list("labels", flat=True):
        names.update(dict.fromkeys(labels))
    return list(names)


def column_of(label: str) -> str:
    return f"label_{label}" if label in METADATA_COLUMNS else label


def zip_write(
    dataset: Dataset,
    target: Path,
    progress: Callable[[], bool] | None = None,
    *,
    include_dicom: bool = False,
) -> None:
    """Write the dataset's ZIP to ``target``, file by file; ``progress`` is called
    after each image and stops the export by returning False. The CSV's rows go to
    a file beside ``target`` meanwhile (a ZIP takes one entry at a time)."""
    labels = label_columns(dataset)
    series = dicom_series(dataset) if include_dicom else None
    rows = target.with_name(f"{target.name}.metadata.csv")
    with (
        zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        rows.open("w", encoding="utf-8", newline="") as table,
    ):
        writer = csv.writer(table)
        writer.writerow([*METADATA_COLUMNS, *map(column_of, labels)])
        for number, image in enumerate(images_of(dataset), start=1):
            _image_copy(archive, image)
            if series is not None:
                _dicom_write(archive, image, series, number)
            writer.writerow(metadata_row(dataset, image, labels))
            if progress is not None and progress() is False:
                raise ExportStopped
        table.close()
        archive.write(rows, "metadata.csv")
        archive.writestr("DATASHEET.md", datasheet(dataset))
    rows.unlink()


def images_of(dataset: Dataset) -> Iterator[DatasetImage]:
    rows = DatasetImage.objects.filter(prompt__dataset=dataset).select_related(
        "prompt__case"
    )
    return rows.order_by("prompt__index", "index").iterator(chunk_size=500)


def _image_copy(archive: zipfile.ZipFile, image: DatasetImage) -> None:
    """The stored PNG as it is (PNG is compressed already: stored, not deflated)."""
    info = zipfile.ZipInfo(f"images/{image.savename}")
    info.compress_type = zipfile.ZIP_STORED
    with default_storage.open(image.image, "rb") as src, archive.open(info, "w") as out:
        shutil.copyfileobj(src, out, COPY_CHUNK)


def dicom_series(dataset: Dataset) -> dicom.Series:
    """A new patient, study and series for one export's DICOM files."""
    version = dataset.model_version
    source = version.source + (f"@{version.revision}" if version.revision else "")
    sha = model_sha256(version)
    derivation = (
        f"Synthetic image generated by xrayweb from a text prompt with model "
        f"version {version.name} ({version.get_kind_display()}, source {source}"
        + (f", sha256 {sha}" if sha else "")
        + f"); dataset {dataset.pk}, job seed {dataset.seed}. Not for diagnosis."
    )
    return dicom.Series(patient_id=f"SYNTHETIC-{dataset.pk}", derivation=derivation)


def _dicom_write(
    archive: zipfile.ZipFile, image: DatasetImage, series: dicom.Series, number: int
) -> None:
    """The image's PNG as a Secondary Capture (deflated: DICOM pixels are raw)."""
    with default_storage.open(image.image, "rb") as src:
        pixels = dicom.pixels_of(src.read(), image.savename)
    ds = dicom.secondary_capture(pixels, series=series, number=number)
    name = image.savename.removesuffix(".png")
    archive.writestr(f"dicom/{name}.dcm", dicom.encoded(ds))


def metadata_row(dataset: Dataset, image: DatasetImage, labels: list[str]) -> list:
    prompt, params = image.prompt, dataset.params
    case = prompt.case
    version = dataset.model_version
    return [
        prompt.text,
        image.savename,
        annotated_prompt(prompt),
        case.uid if case else "",
        case.split if case else "",
        image.seed,
        version.name,
        model_sha256(version),
        params["steps"],
        params["guidance_scale"],
        params["scheduler"],
        params["width"],
        params["height"],
        params["lora_scale"],
        params["negative_prompt"],
        *(prompt.labels.get(label, "") for label in labels),
    ]


def annotated_prompt(prompt: DatasetPrompt) -> str:
    if prompt.case is not None and prompt.case.mesh_major:
        findings = "; ".join(prompt.case.mesh_major)
    else:
        findings = "; ".join(f"{k}: {v}" for k, v in prompt.labels.items() if v)
    return f"{prompt.text} | {findings}" if findings else prompt.text


def model_sha256(version: ModelVersion) -> str:
    return version.lora_sha256 or version.files_sha256 or ""


def model_card(version: ModelVersion) -> str | None:
    """The model folder's MODEL_CARD.md: in storage for a trained folder, on disk
    for a shipped one; None when it has none."""
    if version.files_key:
        key = f"{version.files_key}{MODEL_CARD}"
        if default_storage.exists(key):
            with default_storage.open(key, "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        return None
    path = Path(version.source) / MODEL_CARD
    return path.read_text(encoding="utf-8") if path.is_file() else None


def datasheet(dataset: Dataset) -> str:
    version = dataset.model_version
    card = model_card(version)
    lines = [
        f"# Datasheet: {dataset.name}",
        "",
        "**Every image in this dataset is synthetic.** It was generated by a "
        "text-to-image model from the prompts in metadata.csv; it shows no real "
        "patient. It is for research and education only and **not for diagnosis**. "
        "Each PNG says so in its `Synthetic` and `Notice` text chunks.",
        "",
        "## How it was made",
        "",
        f"- Images: {dataset.images_total} ({dataset.prompts_total} prompts × "
        f"{dataset.images_per_prompt})",
        f"- Prompts: {dataset.get_source_display()}"
        + (f" ({dataset.source_description})" if dataset.source_description else ""),
        f"- Model version: {version.name} ({version.get_kind_display()}), source "
        f"{version.source}" + (f"@{version.revision}" if version.revision else ""),
        f"- Model sha256: {model_sha256(version) or 'not recorded'}",
        f"- Job seed: {dataset.seed} (each prompt's seed is derived from it and the "
        "prompt's index; metadata.csv lists every image's seed)",
        f"- Parameters: {', '.join(f'{k}={v!r}' for k, v in dataset.params.items())}",
        "",
        "## metadata.csv",
        "",
        f"Columns: {', '.join(METADATA_COLUMNS)}, then the uploaded CSV's labels.",
        "",
        "## Model card",
        "",
        card.strip() if card else "The model folder has no MODEL_CARD.md.",
        "",
        "## Training data and licences",
        "",
        ATTRIBUTION,
        "",
    ]
    return "\n".join(lines)
