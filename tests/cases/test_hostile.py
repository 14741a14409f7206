"""Hostile and broken input, built here: each bad item is one clear report entry.

Every case imports one good study (CXR1 with its image) beside the bad item, and
checks that the good study is fully stored and that the report names the bad item's
problem. None of these files leaves the test's temporary folder.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from generator.iuxray import images, kaggle, openi, r2gen, records, safetar
from generator.iuxray.safetar import TarLimits
from tests.cases.conftest import make_tar, png_bytes, report_xml
from xrayweb.cases import services
from xrayweb.cases.models import Case, CaseImage

GOOD_IMAGE = "CXR1_IM-0001-1001"
SMALL_LIMITS = TarLimits(member_bytes=200_000, total_bytes=2_000_000)

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<eCitation><uId id="CXR7"/><MeSH><major>&xxe;</major></MeSH></eCitation>"""
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<eCitation><uId id="CXR7"/><MeSH><major>&lol3;</major></MeSH></eCitation>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE eCitation SYSTEM "http://127.0.0.1:9/evil.dtd">
<eCitation><uId id="CXR7"/></eCitation>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x"> %p;]>
<eCitation><uId id="CXR7"/></eCitation>"""


def chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG declaring 10^10 pixels in a few dozen bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        images.PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def png_bad_crc() -> bytes:
    data = bytearray(png_bytes())
    data[40] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    return bytes(data)


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32)).save(buffer, format="JPEG")
    return buffer.getvalue()


def reg(name: str, data: bytes) -> tuple:
    return (name, data)


def special(name: str, kind: bytes, linkname: str = "") -> tuple:
    return (name, b"", {"type": kind, "linkname": linkname})


def good_reports() -> list[tuple]:
    return [reg("ecgen-radiology/1.xml", report_xml("CXR1", [GOOD_IMAGE]))]


def good_images() -> list[tuple]:
    return [reg(f"{GOOD_IMAGE}.png", png_bytes())]


# (id, extra report members, extra image members, expected text in a skip reason)
OPENI_CASES = [
    (
        "absolute-path",
        [reg("/etc/cron.d/evil.xml", b"<x/>")],
        [],
        safetar.ABSOLUTE_PATH,
    ),
    ("windows-drive", [reg("C:/evil.xml", b"<x/>")], [], safetar.ABSOLUTE_PATH),
    ("dotdot", [reg("../evil.xml", b"<x/>")], [], safetar.PARENT_PATH),
    ("dotdot-inner", [reg("ecgen-radiology/../../e.xml", b"<x/>")], [], "'..'"),
    ("dotdot-backslash", [reg("..\\..\\evil.xml", b"<x/>")], [], safetar.PARENT_PATH),
    ("symlink", [special("a.xml", tarfile.SYMTYPE, "/etc/passwd")], [], "symbolic"),
    ("hardlink", [special("b.xml", tarfile.LNKTYPE, "/etc/passwd")], [], "hard link"),
    ("char-device", [special("c.xml", tarfile.CHRTYPE)], [], safetar.DEVICE),
    ("block-device", [special("d.xml", tarfile.BLKTYPE)], [], safetar.DEVICE),
    ("fifo", [special("f.xml", tarfile.FIFOTYPE)], [], safetar.DEVICE),
    (
        "image-symlink",
        [],
        [special("x.png", tarfile.SYMTYPE, "/etc/shadow")],
        "symbolic",
    ),
    ("oversize-member", [reg("big.xml", b"\0" * 300_000)], [], "200000-byte limit"),
    (
        "total-size-bomb",
        [],
        [reg(f"CXR1_IM-0001-{n}.png", b"\0" * 190_000) for n in range(2000, 2012)],
        "archive unpacks to more than 2000000 bytes",
    ),
    ("malformed-xml", [reg("m.xml", b"<eCitation><uId id='CXR7'>")], [], "malformed"),
    ("empty-xml", [reg("e.xml", b"")], [], "malformed XML"),
    ("xxe", [reg("x.xml", XXE)], [], "refused XML construct"),
    ("billion-laughs", [reg("l.xml", BILLION_LAUGHS)], [], "refused XML construct"),
    ("external-dtd", [reg("d.xml", EXTERNAL_DTD)], [], "refused XML construct"),
    ("parameter-entity", [reg("p.xml", PARAMETER_ENTITY)], [], "refused XML"),
    ("no-uid", [reg("n.xml", b"<eCitation><MeSH/></eCitation>")], [], openi.NO_UID),
    (
        "bad-uid",
        [reg("u.xml", report_xml("../../etc/passwd"))],
        [],
        records.BAD_UID.format(uid="../../etc/passwd"),
    ),
    (
        "latin1-in-utf8-xml",
        [
            reg(
                "l1.xml",
                report_xml("CXR7", findings="caf\xe9").replace(b"caf", b"caf\xe9"),
            )
        ],
        [],
        "malformed XML",
    ),
    ("xml-too-large", [reg("h.xml", b"<a>" + b" " * 1_100_000)], [], "-byte limit"),
    ("png-header-bomb", [], [reg("CXR1_IM-0001-2001.png", png_header_bomb())], "pixel"),
    (
        "png-truncated",
        [],
        [reg("CXR1_IM-0001-2002.png", png_bytes()[:600])],
        "corrupt PNG: Truncated",
    ),
    ("png-bad-crc", [], [reg("CXR1_IM-0001-2003.png", png_bad_crc())], "corrupt PNG"),
    ("jpeg-named-png", [], [reg("CXR1_IM-0001-2004.png", jpeg_bytes())], "not a PNG"),
    ("text-named-png", [], [reg("CXR1_IM-0001-2005.png", b"hello")], "not a PNG"),
    ("html-named-png", [], [reg("CXR1_IM-0001-2006.png", b"<html>")], "not a PNG"),
    (
        "image-without-report",
        [],
        [reg("CXR999_IM-0999-1001.png", png_bytes())],
        services.NO_REPORT.format(uid="CXR999"),
    ),
    (
        "report-without-image",
        [reg("ecgen-radiology/2.xml", report_xml("CXR2", ["CXR2_IM-0002-1001"]))],
        [],
        services.MISSING_IMAGES.format(ids="CXR2_IM-0002-1001"),
    ),
    ("bad-image-name", [], [reg("evil.png", png_bytes())], "not of the form"),
]


@pytest.mark.parametrize(
    ("extra_reports", "extra_images", "expected"),
    [case[1:] for case in OPENI_CASES],
    ids=[case[0] for case in OPENI_CASES],
)
def test_it_reports_a_hostile_openi_item_and_imports_the_rest(
    importer, tmp_path: Path, extra_reports, extra_images, expected
):
    reports = make_tar(tmp_path / "reports.tgz", good_reports() + extra_reports)
    imgs = make_tar(tmp_path / "png.tgz", good_images() + extra_images)

    report = importer(reports=reports, images=imgs, tar_limits=SMALL_LIMITS)

    reasons = [s["reason"] for s in report.skipped]
    assert any(expected in reason for reason in reasons), reasons
    assert Case.objects.filter(uid="CXR1").exists()
    image = CaseImage.objects.get(image_id=GOOD_IMAGE)
    assert image.case.uid == "CXR1"
    assert not Path("/tmp/evil.xml").exists()


def test_it_reports_an_archive_that_is_not_a_tar(importer, tmp_path: Path):
    garbage = tmp_path / "reports.tgz"
    garbage.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)

    report = importer(reports=garbage)

    assert report.skipped[0]["reason"].startswith("not a readable tar archive")
    assert Case.objects.count() == 0


def test_it_keeps_what_came_before_a_truncated_archive(importer, tmp_path: Path):
    reports = make_tar(
        tmp_path / "reports.tgz",
        good_reports() + [reg(f"{n}.xml", report_xml(f"CXR{n}")) for n in range(2, 40)],
    )
    data = reports.read_bytes()
    reports.write_bytes(data[: len(data) * 2 // 3])

    report = importer(reports=reports)

    assert any("tar archive" in s["reason"] for s in report.skipped)
    assert Case.objects.filter(uid="CXR1").exists()


def kaggle_folder(tmp_path: Path, reports: bytes, projections: bytes) -> Path:
    folder = tmp_path / "kaggle"
    (folder / kaggle.IMAGES_DIR).mkdir(parents=True)
    (folder / kaggle.REPORTS_CSV).write_bytes(reports)
    (folder / kaggle.PROJECTIONS_CSV).write_bytes(projections)
    (folder / kaggle.IMAGES_DIR / "1_IM-0001-1001.dcm.png").write_bytes(png_bytes())
    return folder


GOOD_REPORTS_CSV = (
    "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
    '1,normal,normal,Xray,Cough,None.,Clear lungs.,"No acute disease, café."\n'
)
GOOD_PROJECTIONS_CSV = "uid,filename,projection\n1,1_IM-0001-1001.dcm.png,Frontal\n"

KAGGLE_CASES = [
    (
        "reports-missing-columns",
        b"uid,MeSH,findings\n1,normal,Clear.\n",
        GOOD_PROJECTIONS_CSV.encode(),
        "CSV lacks the columns ['Problems', 'indication', 'comparison', 'impression']",
    ),
    (
        "reports-utf16",
        GOOD_REPORTS_CSV.encode("utf-16"),
        GOOD_PROJECTIONS_CSV.encode(),
        "not UTF-8 text: byte 0xff at offset 0",
    ),
    (
        "reports-latin1",
        GOOD_REPORTS_CSV.encode("latin-1"),
        GOOD_PROJECTIONS_CSV.encode(),
        "not UTF-8 text: byte 0xe9",
    ),
    (
        "projections-missing-columns",
        GOOD_REPORTS_CSV.encode(),
        b"uid,filename\n1,1_IM-0001-1001.dcm.png\n",
        "CSV lacks the columns ['projection']",
    ),
    (
        "projections-unknown-view",
        GOOD_REPORTS_CSV.encode(),
        (GOOD_PROJECTIONS_CSV + "1,1_IM-0001-2001.dcm.png,Oblique\n").encode(),
        kaggle.UNKNOWN_PROJECTION.format(value="Oblique"),
    ),
    (
        "reports-bad-uid",
        (GOOD_REPORTS_CSV + "abc,normal,normal,x,y,z,f,i\n").encode(),
        GOOD_PROJECTIONS_CSV.encode(),
        records.BAD_UID.format(uid="abc"),
    ),
]


@pytest.mark.parametrize(
    ("reports_csv", "projections_csv", "expected"),
    [case[1:] for case in KAGGLE_CASES],
    ids=[case[0] for case in KAGGLE_CASES],
)
def test_it_reports_a_broken_kaggle_csv(
    importer, tmp_path: Path, reports_csv, projections_csv, expected
):
    folder = kaggle_folder(tmp_path, reports_csv, projections_csv)
    good = make_tar(tmp_path / "reports.tgz", good_reports())

    report = importer(reports=good, kaggle_dir=folder)

    reasons = [s["reason"] for s in report.skipped]
    assert any(expected in reason for reason in reasons), reasons
    assert Case.objects.filter(uid="CXR1").exists()


def r2gen_folder(tmp_path: Path, annotation: bytes) -> Path:
    folder = tmp_path / "r2gen"
    (folder / r2gen.IMAGES_DIR).mkdir(parents=True)
    (folder / r2gen.ANNOTATION).write_bytes(annotation)
    return folder


def annotation(**entry) -> bytes:
    good = {
        "id": "CXR5_IM-0005",
        "report": "Clear lungs.",
        "image_path": ["CXR5_IM-0005/0.png"],
        "split": "test",
    }
    return json.dumps({"train": [{**good, **entry}], "val": [], "test": []}).encode()


R2GEN_CASES = [
    ("not-json", b"{train: [", "not valid UTF-8 JSON"),
    ("wrong-shape", b"[1, 2, 3]", r2gen.BAD_SHAPE),
    (
        "path-traversal",
        annotation(image_path=["../../../etc/passwd"], split="train"),
        r2gen.BAD_IMAGE_PATH.format(value="../../../etc/passwd"),
    ),
    (
        "bad-study-id",
        annotation(id="../x", split="train"),
        r2gen.BAD_STUDY_ID.format(value="../x"),
    ),
    ("split-conflict", annotation(), "says its split is 'test'"),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [case[1:] for case in R2GEN_CASES],
    ids=[case[0] for case in R2GEN_CASES],
)
def test_it_reports_a_broken_r2gen_annotation(
    importer, tmp_path: Path, content, expected
):
    folder = r2gen_folder(tmp_path, content)
    good = make_tar(tmp_path / "reports.tgz", good_reports())

    report = importer(reports=good, r2gen_dir=folder)

    reasons = [s["reason"] for s in report.skipped]
    assert any(expected in reason for reason in reasons), reasons
    assert Case.objects.filter(uid="CXR1").exists()


def test_it_refuses_a_png_over_the_pixel_budget_before_decoding():
    with pytest.raises(images.ImageRejected, match="decompression bomb refused"):
        images.image_check(png_header_bomb())
    with pytest.raises(images.ImageRejected, match="8000x8000, over the 40000000"):
        images.image_check(png_header_bomb(8000, 8000))


def test_it_never_writes_outside_media(importer, tmp_path: Path, media_root: Path):
    members = [m for case in OPENI_CASES for m in case[2] if "symlink" not in case[0]]
    reports = make_tar(tmp_path / "reports.tgz", good_reports())
    imgs = make_tar(tmp_path / "png.tgz", good_images() + members[:8])

    importer(reports=reports, images=imgs, tar_limits=SMALL_LIMITS)

    written = {p.relative_to(media_root).parts[:2] for p in media_root.rglob("*.png")}
    assert written == {("cases", "original"), ("cases", "256")}
    assert sorted(p.name for p in media_root.rglob("*.png")) == [
        f"{GOOD_IMAGE}.png",
        f"{GOOD_IMAGE}.png",
    ]
