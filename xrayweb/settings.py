"""Django settings, read from the environment; .env.example lists every variable."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from xrayweb.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
    secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("XRAY_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("XRAY_DEBUG", False)
SECRET_KEY = secret_key(env_str("SECRET_KEY"), debug=DEBUG)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS (on by default when XRAY_DEBUG is off): http is redirected, cookies travel
# only over TLS, browsers remember HSTS. /healthz answers over http for the probes.
XRAY_HTTPS = env_bool("XRAY_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = XRAY_HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = XRAY_HTTPS
SESSION_COOKIE_HTTPONLY = CSRF_COOKIE_HTTPONLY = True  # no script reads either
SECURE_HSTS_SECONDS = env_int("XRAY_HSTS_SECONDS", 31_536_000) if XRAY_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("XRAY_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("XRAY_HSTS_PRELOAD", True)
# Only behind a TLS proxy that sets X-Forwarded-Proto itself (and drops a client's):
# otherwise any client could claim https.
XRAY_BEHIND_TLS_PROXY = env_bool("XRAY_BEHIND_TLS_PROXY", False)
if XRAY_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "xrayweb.jobs",
    "xrayweb.cases",
    "xrayweb.generations",
    "xrayweb.training",
    "xrayweb.datasets",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "xrayweb.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "xrayweb.middleware.RejectNulInQuery",
    "xrayweb.middleware.BoundedUploads",
    "xrayweb.api.errors.ApiBodyLimit",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "xrayweb.middleware.PrivateFiles",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into its page
]

ROOT_URLCONF = "xrayweb.urls"
WSGI_APPLICATION = "xrayweb.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# SQLite when DATABASE_URL is unset in development (or XRAY_ALLOW_SQLITE=1): the
# platform starts with no database server. In production an unset URL is an error.
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    # Health checks: a connection the server dropped (restart, pg_terminate_backend)
    # is replaced at the next request instead of answering one 500 per process.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=60, conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # A host that drops packets fails a connect in seconds, not minutes.
        DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
        # Forms render their choices with .iterator(): a server-side cursor costs
        # three round trips (DECLARE, FETCH, CLOSE) for a handful of rows.
        DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
elif DEBUG or env_bool("XRAY_ALLOW_SQLITE", False):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 20},
            # A file, not memory, so a worker process can share the test database.
            "TEST": {"NAME": VAR_DIR / "test-db.sqlite3"},
        }
    }
else:
    raise ImproperlyConfigured(
        "DATABASE_URL is unset while XRAY_DEBUG is off: set it to the PostgreSQL "
        "database (postgres://user:password@host:5432/name), or set "
        "XRAY_ALLOW_SQLITE=1 to run on SQLite in XRAY_VAR_DIR on purpose"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Failed logins (login page and admin) are counted per username and per address
# (xrayweb/logins.py); past the limit either is locked out for a while. Staff unlock
# in Admin → Axes → Access attempts.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("XRAY_LOGIN_FAILURES", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("XRAY_LOGIN_LOCKOUT_MIN", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "xrayweb.logins.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "generate"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# Serve static/ straight from the source folders: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
# Media is never served by URL: protected views check ownership and stream the file.
MEDIA_ROOT = env_path("XRAY_MEDIA_ROOT", VAR_DIR / "media")
# Every file the platform writes goes through Django storage under a key; rows hold
# keys, never host paths. XRAY_STORAGE=local (the default) keeps them in MEDIA_ROOT;
# XRAY_STORAGE=s3 puts them in a private S3-compatible bucket, configured with
# django-storages' own settings names, so workers on other hosts share them.
XRAY_STORAGE = env_str("XRAY_STORAGE", "local")
STORAGE_BACKENDS = {
    "local": "django.core.files.storage.FileSystemStorage",
    "s3": "storages.backends.s3.S3Storage",
}
if XRAY_STORAGE not in STORAGE_BACKENDS:
    raise ImproperlyConfigured(
        f"XRAY_STORAGE must be one of {sorted(STORAGE_BACKENDS)}, got {XRAY_STORAGE!r}"
    )
STORAGES = {
    "default": {"BACKEND": STORAGE_BACKENDS[XRAY_STORAGE]},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL") or None
AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME", "xrayweb")
AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID") or None
AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY") or None
AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME", "us-east-1")
AWS_DEFAULT_ACL = None  # objects stay private: the bucket's policy, no public ACL
AWS_QUERYSTRING_AUTH = True  # any URL the backend makes is presigned...
AWS_QUERYSTRING_EXPIRE = 300  # ...and expires after five minutes
AWS_S3_FILE_OVERWRITE = True  # keys are attempt-scoped: a rewrite is the same file
AWS_S3_SIGNATURE_VERSION = "s3v4"
AWS_S3_ADDRESSING_STYLE = "path"  # works with SeaweedFS and MinIO on one host name
if XRAY_STORAGE == "s3":
    from botocore.config import Config

    # Bounded waits: an unreachable store fails a request in seconds.
    AWS_S3_CLIENT_CONFIG = Config(
        connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}
    )
# Workers report themselves (queues, loadable models) this often; see jobs/presence.
XRAY_WORKER_REPORT_S = env_int("XRAY_WORKER_REPORT_S", 30)
# Workers keep model files fetched from storage here, one folder per sha256, and
# train in XRAY_WORK_DIR (what is worth keeping is copied into storage as written).
XRAY_WORK_DIR = env_path("XRAY_WORK_DIR", VAR_DIR / "work")
XRAY_MODEL_CACHE = env_path("XRAY_MODEL_CACHE", VAR_DIR / "model-cache")
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Server folders the import page and API may read from (comma-separated); the
# command line (manage.py import_iuxray) may read anywhere its user can.
XRAY_IMPORT_ROOTS = [
    Path(root).expanduser().resolve()
    for root in env_list("XRAY_IMPORT_ROOTS", str(VAR_DIR / "imports"))
]
# The largest upload (the import page's archives), refused before it is spooled.
XRAY_UPLOAD_MAX_BYTES = env_int("XRAY_UPLOAD_MAX_BYTES", 2 * 1024**3)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Models. XRAY_BASE_MODEL: a Hub id or folder of SD v1.x.
XRAY_BASE_MODEL = env_str("XRAY_BASE_MODEL")
XRAY_BASE_REVISION = env_str("XRAY_BASE_REVISION", "main")
XRAY_TINY_MODEL_DIR = env_path("XRAY_TINY_MODEL_DIR", VAR_DIR / "models" / "tiny-sd")
# The small offline model shipped in the repository (issue 6), used when no SD v1.x
# base is configured or reachable; the untrained tiny model is the last resort.
XRAY_MINI_MODEL_DIR = env_path("XRAY_MINI_MODEL_DIR", BASE_DIR / "models" / "mini-cxr")
# The folders a local model version may live under (comma-separated); the admin
# refuses a source elsewhere, and each worker checks again before it loads one
# (generations/model_files.model_roots, which always adds the tiny, mini and
# XRAY_BASE_MODEL folders above). Default: where the shipped models are.
XRAY_MODEL_ROOTS = [
    Path(root).expanduser().resolve() for root in env_list("XRAY_MODEL_ROOTS")
] or [VAR_DIR / "models", XRAY_TINY_MODEL_DIR.parent, XRAY_MINI_MODEL_DIR.parent]
XRAY_DEVICE = env_str("XRAY_DEVICE") or None
XRAY_DTYPE = env_str("XRAY_DTYPE") or None
XRAY_CHANNELS_LAST = env_bool("XRAY_CHANNELS_LAST", False)
# CPU threads per worker process; 0 keeps torch's default (one per core). On a host
# shared with other CPU work, 1 avoids OpenMP threads fighting over the cores.
XRAY_TORCH_THREADS = env_int("XRAY_TORCH_THREADS", 0)
# What a new request starts with, where the model recommends nothing else. Unset:
# the defaults bench/sd_cpu.py measured (generator/sampling.py, acceleration.py).
# Steps and sampler: fewer steps with a stronger solver; DeepCache interval: a full
# UNet every N steps, deep features reused between (1: off); token merging: the
# fraction of attention tokens merged (0: off). Each request may change them.
XRAY_DEFAULT_STEPS = env_int("XRAY_DEFAULT_STEPS", 0) or None
XRAY_DEFAULT_SCHEDULER = env_str("XRAY_DEFAULT_SCHEDULER") or None
XRAY_DEEP_CACHE_INTERVAL = env_int("XRAY_DEEP_CACHE_INTERVAL", 0) or None
XRAY_TOKEN_MERGING = env_float("XRAY_TOKEN_MERGING")
XRAY_PROGRESS_INTERVAL_S = float(env_str("XRAY_PROGRESS_INTERVAL_S", "0.5"))
# A running request's preview (latents projected to grey, generator/previews.py) is
# made every this many denoising steps, at most once per interval (the status page
# polls about once a second), and kept in the cache until the job ends; 0 makes none.
XRAY_PREVIEW_EVERY_STEPS = env_int("XRAY_PREVIEW_EVERY_STEPS", 2)
XRAY_PREVIEW_INTERVAL_S = float(env_str("XRAY_PREVIEW_INTERVAL_S", "1"))
# Images per pipeline call on a generation worker: a worker that claims a request
# also claims queued requests that share its model, LoRA scale, size, steps,
# scheduler and guidance, in fair-share order, up to this many images in all. 1 runs
# each request alone (the CPU default: a CPU gains little from batches); 8 suits a
# GPU. On CPU, batched workers run convolutions and linear layers one sample at a
# time (generator/batching.batch_invariant) so that a batched image is bit-identical
# to its request run alone; XRAY_BATCH_INVARIANT=0 trades that for speed.
XRAY_BATCH_IMAGES = env_int("XRAY_BATCH_IMAGES", 1)
XRAY_BATCH_INVARIANT = env_bool("XRAY_BATCH_INVARIANT", True)
# Scheduling priority (nice) of the pool children that run jobs. On a host that also
# serves pages, 10 lets the web answer first while a job computes; 0 leaves it alone.
# The worker's main process (broker, presence) keeps its priority.
XRAY_WORKER_NICE = env_int("XRAY_WORKER_NICE", 10)
# Whether a generated PNG's metadata holds its prompt (a request may say otherwise);
# the synthetic mark and the other parameters are always there.
XRAY_PROMPT_IN_PNG = env_bool("XRAY_PROMPT_IN_PNG", True)
XRAY_HISTORY_PAGE_SIZE = env_int("XRAY_HISTORY_PAGE_SIZE", 20)
# Queue positions reuse a queue's grouped counts for this long per web process
# (xrayweb/jobs/dispatch.queue_snapshot); 0 counts afresh on every request.
XRAY_QUEUE_SNAPSHOT_S = float(env_str("XRAY_QUEUE_SNAPSHOT_S", "1"))
# Where `import_iuxray --download` fetches the Open-i archives; empty: the official URL.
XRAY_OPENI_BASE_URL = env_str("XRAY_OPENI_BASE_URL")

# The job lifecycle (xrayweb/jobs): a claimed job holds a lease that a heartbeat
# renews; a job whose lease ran out lost its worker and is queued again, up to
# XRAY_JOB_MAX_DELIVERIES claims. Reconcile runs from beat every interval.
XRAY_JOB_LEASE_S = env_int("XRAY_JOB_LEASE_S", 60)
XRAY_JOB_HEARTBEAT_S = float(env_str("XRAY_JOB_HEARTBEAT_S", "15"))
XRAY_JOB_MAX_DELIVERIES = env_int("XRAY_JOB_MAX_DELIVERIES", 3)
XRAY_RECONCILE_INTERVAL_S = float(env_str("XRAY_RECONCILE_INTERVAL_S", "60"))
# A sent job no worker claimed for this long, while the broker holds fewer messages
# than the database sent, lost its message (broker flushed or restarted).
XRAY_RECONCILE_AFTER_S = env_int("XRAY_RECONCILE_AFTER_S", 30)
XRAY_ORPHAN_SWEEP_INTERVAL_S = float(env_str("XRAY_ORPHAN_SWEEP_INTERVAL_S", "3600"))
XRAY_ORPHAN_MIN_AGE_S = env_int("XRAY_ORPHAN_MIN_AGE_S", 3600)
# Time limits per job kind: past the soft limit a job ends failed naming the limit;
# past the hard limit the worker's child process is killed.
XRAY_JOB_SOFT_LIMIT_S = env_int("XRAY_JOB_SOFT_LIMIT_S", 1800)
XRAY_JOB_HARD_LIMIT_S = env_int("XRAY_JOB_HARD_LIMIT_S", 1900)
XRAY_IMPORT_SOFT_LIMIT_S = env_int("XRAY_IMPORT_SOFT_LIMIT_S", 3 * 3600)
XRAY_TRAINING_SOFT_LIMIT_S = env_int("XRAY_TRAINING_SOFT_LIMIT_S", 6 * 24 * 3600)
# Quotas (defaults for users without a UserQuota row), in pixel-steps:
# steps × width × height × images. 512² × 50 steps × 4 images is 52.4 million.
XRAY_QUOTA_MAX_QUEUED = env_int("XRAY_QUOTA_MAX_QUEUED", 20)
XRAY_QUOTA_DAILY_PIXEL_STEPS = env_int("XRAY_QUOTA_DAILY_PIXEL_STEPS", 2_000_000_000)
XRAY_MAX_REQUEST_PIXEL_STEPS = env_int("XRAY_MAX_REQUEST_PIXEL_STEPS", 52_428_800)
# Synthetic datasets: at most this many prompts and images per dataset, run in
# chunks of this many prompts (a chunk is one gpu job, redone whole after a kill).
XRAY_DATASET_MAX_PROMPTS = env_int("XRAY_DATASET_MAX_PROMPTS", 5000)
XRAY_DATASET_MAX_IMAGES = env_int("XRAY_DATASET_MAX_IMAGES", 20000)
XRAY_DATASET_CHUNK_PROMPTS = env_int("XRAY_DATASET_CHUNK_PROMPTS", 8)
# A dataset's quality and privacy report: FID only with this many images on both
# sides; real images for FID capped at this many; the memorization threshold sits
# this far above the highest nearest-training cosine of held-out real images.
XRAY_DATASET_REPORT_MIN_FID_IMAGES = env_int("XRAY_DATASET_REPORT_MIN_FID_IMAGES", 100)
XRAY_DATASET_REPORT_MAX_REAL = env_int("XRAY_DATASET_REPORT_MAX_REAL", 5000)
XRAY_DATASET_REPORT_MARGIN = float(env_str("XRAY_DATASET_REPORT_MARGIN", "0.02"))
# The data the shipped mini model was trained on (its memorization check needs it).
XRAY_PUBLIC_CXR_DIR = env_path(
    "XRAY_PUBLIC_CXR_DIR", BASE_DIR.parent / "shared" / "data" / "public-cxr"
)

# Queues: `gpu` generations, `train` training and evaluation (so a week-long run
# never blocks generations), `cpu` imports, `control` reconcile and sweeps (never
# behind a long job). XRAY_QUEUE_PREFIX isolates test runs sharing one Redis.
XRAY_QUEUE_PREFIX = env_str("XRAY_QUEUE_PREFIX", "")
QUEUE_GPU, QUEUE_TRAIN, QUEUE_CPU, QUEUE_CONTROL = (
    f"{XRAY_QUEUE_PREFIX}{name}" for name in ("gpu", "train", "cpu", "control")
)
# Worker slots per queue: the dispatcher keeps slots + 1 messages in the broker.
XRAY_QUEUE_SLOTS = {
    name: int(count)
    for name, count in (
        item.split("=") for item in env_list("XRAY_QUEUE_SLOTS", "gpu=1,train=1,cpu=1")
    )
}

# Celery: Redis broker; the database, not the broker, is the truth about every job.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_ACKS_LATE = True
# A lost child is recovered through its job's lease, not by a redelivered message.
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = XRAY_JOB_SOFT_LIMIT_S
CELERY_TASK_TIME_LIMIT = XRAY_JOB_HARD_LIMIT_S
# Longer than the longest job, or Redis would hand a running job to a second worker
# (whose claim would find it running and drop it). Socket timeouts: a Redis that
# stops answering fails a send in seconds; the job waits in the database.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": XRAY_JOB_HARD_LIMIT_S * 2,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = QUEUE_CPU
CELERY_TASK_ROUTES = {
    "generation.*": {"queue": QUEUE_GPU},
    "training.*": {"queue": QUEUE_TRAIN},
    "evaluation.*": {"queue": QUEUE_TRAIN},
    "dataset.*": {"queue": QUEUE_GPU},
    "dataset_export.*": {"queue": QUEUE_CPU},
    "dataset_report.*": {"queue": QUEUE_TRAIN},
    "imports.*": {"queue": QUEUE_CPU},
    "jobs.*": {"queue": QUEUE_CONTROL},
}
# Each entry expires after one interval, so a stopped control worker finds one
# pending message, not a pile.
CELERY_BEAT_SCHEDULE = {
    "reconcile-jobs": {
        "task": "jobs.reconcile",
        "schedule": XRAY_RECONCILE_INTERVAL_S,
        "options": {"expires": XRAY_RECONCILE_INTERVAL_S},
    },
    "sweep-orphan-files": {
        "task": "jobs.sweep",
        "schedule": XRAY_ORPHAN_SWEEP_INTERVAL_S,
        "options": {"expires": XRAY_ORPHAN_SWEEP_INTERVAL_S},
    },
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# The cache every web process shares: the API's request counts (throttling).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env_str("XRAY_CACHE_URL") or CELERY_BROKER_URL,
        "KEY_PREFIX": f"xrayweb{XRAY_QUEUE_PREFIX}",
        # Bounded waits: a Redis that stops answering costs a request 2 s at most,
        # and the throttles then let the request through (api/throttles.py).
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }
}

# The REST API (xrayweb/api): knox tokens (hashed at rest; shown once) or a browser
# session with CSRF; JSON errors naming the bad value; limits per user and per token.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "xrayweb.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "xrayweb.api.throttles.UserReads",
        "xrayweb.api.throttles.UserWrites",
        "xrayweb.api.throttles.TokenReads",
        "xrayweb.api.throttles.TokenWrites",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "xrayweb.api.negotiation.JsonAlways",
    "DEFAULT_SCHEMA_CLASS": "xrayweb.api.schema.ApiSchema",
    "EXCEPTION_HANDLER": "xrayweb.api.errors.exception_handler",
}
KNOX_TOKEN_MODEL = "api.ApiToken"
# knox's own migrations create its AuthToken table even when the model is swapped
# out; without them no table is made for a model nothing uses.
MIGRATION_MODULES = {"knox": None}
REST_KNOX = {"TOKEN_TTL": None, "TOKEN_MODEL": "api.ApiToken"}  # expiry per token
# Requests per period ("N/s", "N/min", "N/hour", "N/day"): reads are GETs; writes
# are creates, cancels and reruns. Staff raise a user's limits in UserQuota.
XRAY_API_RATES = {
    "user_reads": env_str("XRAY_API_USER_READS", "600/min"),
    "user_writes": env_str("XRAY_API_USER_WRITES", "60/min"),
    "token_reads": env_str("XRAY_API_TOKEN_READS", "300/min"),
    "token_writes": env_str("XRAY_API_TOKEN_WRITES", "30/min"),
}
XRAY_API_MAX_BODY_BYTES = env_int("XRAY_API_MAX_BODY_BYTES", 64 * 1024)
SPECTACULAR_SETTINGS = {
    "TITLE": "xrayweb API",
    "DESCRIPTION": (
        "Synthetic chest X-rays from radiology text. Authenticate with "
        "`Authorization: Token <key>` (or `Bearer <key>`); make a key on /tokens/ "
        "or with `manage.py api_token USERNAME`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("XRAY_LOG_LEVEL", "INFO")},
}
