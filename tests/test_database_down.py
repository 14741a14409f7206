"""While PostgreSQL is unreachable the web answers 503 with a readable page and a
Retry-After header, and once it is back every page answers normally again.

gunicorn reaches PostgreSQL through a TCP proxy that the test closes and reopens, so
the machine's shared server is never stopped. Closing the proxy also cuts every open
connection, as a server restart would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings

from tests.jobs.conftest import free_port, login
from tests.world import gunicorn

pytestmark = pytest.mark.slow

PAGES = ["/", "/history/", "/login/"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; stop() refuses and cuts connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            # close() alone leaves a blocked accept() listening on Linux.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(transactional_db) -> Iterator[TcpProxy]:
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        pytest.skip("needs PostgreSQL: SQLite has no server to lose")
    tcp = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    tcp.start()
    yield tcp
    tcp.stop()


@pytest.fixture
def web(proxy: TcpProxy, tmp_path: Path) -> Iterator[str]:
    """gunicorn with two workers whose database is behind the proxy."""
    db = django_settings.DATABASES["default"]
    env = {
        "DATABASE_URL": f"postgres://{db.get('USER') or 'postgres'}"
        f"@127.0.0.1:{proxy.port}/{db['NAME']}",
        "XRAY_MEDIA_ROOT": str(tmp_path / "media"),
    }
    with gunicorn(env, workers=2) as url:
        yield url


def test_an_unreachable_database_answers_503_then_pages_come_back(web, proxy, alice):
    session = login(web, "alice", "alice-pass-123")
    for page in PAGES:
        assert session.get(f"{web}{page}", timeout=30).status_code == 200, page

    proxy.stop()
    down = [session.get(f"{web}{page}", timeout=30) for page in PAGES * 2]

    assert [r.status_code for r in down] == [503] * len(down)
    for response in down:
        assert response.headers["Retry-After"].isdigit()
        assert "database is not reachable" in response.text
        assert response.headers["Content-Type"].startswith("text/html")

    proxy.start()
    # Both gunicorn workers held connections that the outage cut: every request
    # afterwards must succeed, none may answer 500 from a stale connection.
    back = [session.get(f"{web}{page}", timeout=30) for page in PAGES * 4]

    assert [r.status_code for r in back] == [200] * len(back)


def test_the_login_page_works_without_the_database_and_signing_in_gives_503(
    web, proxy, alice
):
    proxy.stop()
    anonymous = requests.Session()

    page = anonymous.get(f"{web}/login/", timeout=30)
    signed = anonymous.post(
        f"{web}/login/",
        data={
            "username": "alice",
            "password": "alice-pass-123",
            "csrfmiddlewaretoken": anonymous.cookies["csrftoken"],
        },
        headers={"Referer": f"{web}/login/"},
        timeout=30,
    )

    assert page.status_code == 200  # nothing on it needs the database
    assert signed.status_code == 503
    assert "briefly unavailable" in signed.text
