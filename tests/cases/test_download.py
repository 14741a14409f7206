"""--download against a loopback HTTP server: resume, restart, checksum, the command."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from generator.iuxray import download
from tests.cases.conftest import make_tar, png_bytes
from tests.conftest import SHARED_DATA, require_shared
from xrayweb.cases.models import Case, CaseImage, ImportRun
from xrayweb.jobs.models import Status


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` by name, honouring ``Range: bytes=N-`` when allowed."""

    def do_GET(self) -> None:
        data = self.server.files.get(self.path.rsplit("/", 1)[-1])
        self.server.ranges.append(self.headers.get("Range"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range", "")
        if self.server.ranges_supported and header.startswith("bytes="):
            start = int(header[6:].split("-")[0])
        if start >= len(data) and start:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.files, httpd.ranges, httpd.ranges_supported = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/imgs/collections/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_it_resumes_a_partial_download(server, tmp_path: Path):
    data = bytes(range(256)) * 4000
    server.files["a.tgz"] = data
    (tmp_path / "a.tgz.part").write_bytes(data[:300_000])

    result = download.fetch(
        server.url + "a.tgz",
        tmp_path / "a.tgz",
        sha256=hashlib.sha256(data).hexdigest(),
    )

    assert result.resumed_from == 300_000
    assert server.ranges == ["bytes=300000-"]
    assert (tmp_path / "a.tgz").read_bytes() == data
    assert not (tmp_path / "a.tgz.part").exists()


def test_it_restarts_when_the_server_ignores_range(server, tmp_path: Path):
    data = b"archive" * 10_000
    server.files["a.tgz"], server.ranges_supported = data, False
    (tmp_path / "a.tgz.part").write_bytes(b"stale bytes of another file")

    result = download.fetch(server.url + "a.tgz", tmp_path / "a.tgz")

    assert result.resumed_from == 0
    assert (tmp_path / "a.tgz").read_bytes() == data


def test_it_finishes_a_part_that_is_already_whole(server, tmp_path: Path):
    data = b"whole" * 1000
    server.files["a.tgz"] = data
    (tmp_path / "a.tgz.part").write_bytes(data)

    download.fetch(server.url + "a.tgz", tmp_path / "a.tgz")

    assert (tmp_path / "a.tgz").read_bytes() == data


def test_it_fails_a_corrupted_reports_download_on_its_checksum(server, tmp_path: Path):
    genuine = require_shared(SHARED_DATA / "openi" / "NLMCXR_reports.tgz").read_bytes()
    corrupted = bytearray(genuine)
    corrupted[5000] ^= 0x01
    server.files[download.REPORTS_ARCHIVE] = bytes(corrupted)

    with pytest.raises(download.DownloadError) as caught:
        download.fetch_openi(tmp_path, base_url=server.url, images=False)

    assert str(caught.value).startswith("NLMCXR_reports.tgz has sha256 ")
    assert f"expected {download.REPORTS_SHA256}" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_it_reports_an_unreachable_server(tmp_path: Path):
    with pytest.raises(
        download.DownloadError, match=re.escape("downloading http://127.0.0.1:9/")
    ):
        download.fetch("http://127.0.0.1:9/a.tgz", tmp_path / "a.tgz")


@pytest.mark.needs_shared
@pytest.mark.slow
def test_it_downloads_and_imports_from_the_command(
    server, tmp_path: Path, importer, capsys
):
    genuine = require_shared(SHARED_DATA / "openi" / "NLMCXR_reports.tgz").read_bytes()
    server.files[download.REPORTS_ARCHIVE] = genuine
    images = make_tar(
        tmp_path / "png.tgz",
        [
            ("CXR1_1_IM-0001-3001.png", png_bytes(seed=1)),
            ("CXR1_1_IM-0001-4001.png", png_bytes(seed=2)),
        ],
    )
    server.files[download.IMAGES_ARCHIVE] = images.read_bytes()
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "NLMCXR_reports.tgz.part").write_bytes(genuine[:400_000])

    call_command(
        "import_iuxray", download=True, base_url=server.url, download_dir=folder
    )

    assert "bytes=400000-" in server.ranges
    run = ImportRun.objects.get()
    assert run.status == Status.SUCCEEDED
    assert run.report["cases"]["created"] == 3955
    assert run.report["images"]["created"] == 2
    assert Case.objects.count() == 3955
    assert set(CaseImage.objects.values_list("image_id", flat=True)) == {
        "CXR1_IM-0001-3001",
        "CXR1_IM-0001-4001",
    }
    output = capsys.readouterr().out
    assert "Cases: 3955 created, 0 updated, 0 unchanged" in output
    assert "Images: 2 created" in output


def test_it_refuses_a_command_without_sources(db):
    with pytest.raises(CommandError, match="Give at least one of reports"):
        call_command("import_iuxray")


def test_it_names_a_missing_path(db, tmp_path: Path):
    with pytest.raises(
        CommandError, match=re.escape("reports path '/nowhere/r.tgz' does not")
    ):
        call_command("import_iuxray", reports=Path("/nowhere/r.tgz"))
