"""Tandem settings, read from the environment.

Nothing set: the embedded default for one machine (SQLite, a broker on its own
SQLite file, artifacts under ./var). A real deployment sets DATABASE_URL,
CELERY_BROKER_URL, SECRET_KEY, ALLOWED_HOSTS and ARTIFACTS_DIR, with DEBUG off;
then a missing secret or database stops start-up with a message saying which.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from webapp.env import database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TANDEM_VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_str("SECRET_KEY")
DATABASE_URL = env_str("DATABASE_URL")
# DEBUG is the embedded mode's convenience only: once DATABASE_URL names a database server, a
# crash page must not show settings or URL patterns to whoever hit it, so DEBUG is off unless
# asked for (the test command asks, on its own machine).
DEBUG = env_bool("DEBUG", not DATABASE_URL or DATABASE_URL.startswith("sqlite:"))
if not DEBUG:
    missing = [
        name for name, value in (("SECRET_KEY", SECRET_KEY), ("DATABASE_URL", DATABASE_URL)) if not value
    ]
    if missing:
        raise ImproperlyConfigured(
            f"DEBUG is off, so Tandem runs as a real deployment and needs {' and '.join(missing)} "
            "in the environment. Unset DEBUG for the embedded single-machine mode."
        )
if not SECRET_KEY:
    # Embedded mode only: a fixed, clearly-marked key that production can never use.
    SECRET_KEY = "embedded-insecure-key-for-one-machine-only-never-deploy-this-value-0123456789"

# Error reports (and DEBUG pages, where DEBUG is on) mask every setting that can hold a secret,
# including URLs that carry passwords (DATABASE_URL, CELERY_BROKER_URL, CACHE_URL).
DEFAULT_EXCEPTION_REPORTER_FILTER = "webapp.security.SecretMaskingFilter"

# Multi-process runs name an accelerate config (FSDP, DeepSpeed...) that lives in this folder;
# a run config can never point accelerate at any other file (training/run_configs.py).
ACCELERATE_CONFIGS_DIR = Path(env_str("ACCELERATE_CONFIGS_DIR") or str(BASE_DIR / "docker" / "accelerate"))

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "webapp",
    "annotation",
    "training",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from static files, no CDN
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Scripts only from our static files, whatever a page shows (webapp/security.py).
    "webapp.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # An unreachable database answers 503 with a short message, not a 500 (webapp/middleware.py).
    "webapp.middleware.DatabaseUnavailableMiddleware",
]

# --- API (/api/, training/api.py) -------------------------------------------
# Scripts send "Authorization: Token <key>" (manage.py drf_create_token USER); the
# browser's session works too. Roles are checked per view (training/api.py).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tandem API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # /api/docs/ works offline and under the Content-Security-Policy: Swagger UI from static files.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

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
                "webapp.roles.roles_context",
            ],
        },
    },
    {
        # Asked for by name only (``using="jinja2"``), for *.jinja files: the annotator's work
        # partial, drawn after every submit (webapp/jinja2.py).
        "NAME": "jinja2",
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"environment": "webapp.jinja2.environment"},
    },
]

# --- Database -------------------------------------------------------------
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "tandem.sqlite3",
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share the file: WAL lets readers run beside a
    # writer, IMMEDIATE takes the write lock up front so transactions never deadlock.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"].setdefault("TEST", {"NAME": VAR_DIR / "test-tandem.sqlite3"})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ------------------------------------------------------------------
# Shared by every web process (and the workers): the sign-in throttle counts
# failures here (webapp/login.py). A deployment points CACHE_URL at Redis; the
# embedded mode keeps it in files under VAR_DIR, which every local process sees.
CACHE_URL = env_str("CACHE_URL") or ""
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "tandem",
            # Fail fast when Redis is down: sign-in then counts in-process (webapp/login.py).
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
elif not CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": VAR_DIR / "cache",
        }
    }
else:
    raise ImproperlyConfigured(f"CACHE_URL must be a redis:// or rediss:// URL, not {CACHE_URL!r}.")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# ModelBackend that reads a user and their roles in one statement (webapp/auth.py).
AUTHENTICATION_BACKENDS = ["webapp.auth.RoleAwareBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Embedded mode serves static files from the finders and collects nothing;
# a deployment collects them (docker/web.Dockerfile) and WhiteNoise serves the result.
STATIC_ROOT = env_str("STATIC_ROOT") or (None if DEBUG else str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Checkpoints, reward models, snapshots and exports. Web and workers must see the
# same folder (a shared volume in docker/compose.yaml).
ARTIFACTS_DIR = Path(env_str("ARTIFACTS_DIR", str(VAR_DIR / "artifacts")))
MEDIA_ROOT = ARTIFACTS_DIR / "uploads"
# The project's base policy: empty means the bundled SmolLM2-135M-Instruct; or any
# Hugging Face model directory or GGUF file.
BASE_MODEL = env_str("BASE_MODEL") or None
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Caps on one prompt or preference-data import (annotation/importers.py), each checked
# while the file streams and refused with a message naming it; the upload pages state them.
IMPORT_MAX_UPLOAD_BYTES = env_int("IMPORT_MAX_UPLOAD_BYTES", 256 * 1024 * 1024)  # as sent, gzipped or not
IMPORT_MAX_DECOMPRESSED_BYTES = env_int("IMPORT_MAX_DECOMPRESSED_BYTES", 1024 * 1024 * 1024)
IMPORT_MAX_ROWS = env_int("IMPORT_MAX_ROWS", 1_000_000)
IMPORT_MAX_LINE_BYTES = env_int("IMPORT_MAX_LINE_BYTES", 4 * 1024 * 1024)
IMPORT_MAX_NESTING = env_int("IMPORT_MAX_NESTING", 32)  # JSON depth; a conversation row needs 3

# --- Celery ---------------------------------------------------------------
# Embedded mode: kombu's SQLAlchemy transport on its own SQLite file (never the
# app's database file), so one machine needs no broker server.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.tasks.generate_*": {"queue": "gpu"},
    "training.tasks.train_*": {"queue": "gpu"},
    "training.tasks.run_*": {"queue": "gpu"},
}
# A run's state lives in its TrainingRun row, not in a result backend.
CELERY_TASK_IGNORE_RESULT = True
# At-least-once: a task is acknowledged when it finishes, so a killed worker's task
# is delivered again; every task checks its run row first, so redelivery is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A running run whose worker has written no heartbeat for this long is presumed dead
# (SIGKILL, OOM, lost machine) and failed, so the admin can retry it (training.runs).
# Workers beat every min(10 s, a quarter of it); web and workers must agree on it.
RUN_STALE_AFTER_SECONDS = env_int("RUN_STALE_AFTER_SECONDS", 120)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("TASK_SOFT_TIME_LIMIT", 6 * 3600)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 300
# Redis hands an unacknowledged task to another worker after the visibility timeout,
# so it must outlast the hard time limit or long training runs would start twice.
# (The SQLAlchemy transport passes its options to create_engine, so it gets none.)
REDIS_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600,
    "max_retries": 1,
    "interval_start": 0,
    "interval_max": 1,
    # A broker that stops answering without closing the connection (frozen, failing
    # over, a dropped network path) would hang a publish, and the admin's request, forever:
    # give up after this long and say the queue cannot be reached. Above kombu's 1 s BRPOP.
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
}
CELERY_BROKER_TRANSPORT_OPTIONS = (
    REDIS_BROKER_TRANSPORT_OPTIONS if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else {}
)
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# --- Security (real deployment) --------------------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_ENGINE = "webapp.sessions"  # Django's database sessions, read in one statement
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
# Sign-in throttle (webapp/login.py): failures allowed per username and per client
# address within one window (seconds) before sign-ins pause for a window.
LOGIN_FAILURES_PER_USERNAME = env_int("LOGIN_FAILURES_PER_USERNAME", 5)
LOGIN_FAILURES_PER_IP = env_int("LOGIN_FAILURES_PER_IP", 20)
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", 15 * 60)
# Reverse proxies in front of the web process that append to X-Forwarded-For. 0: the
# client address is REMOTE_ADDR and X-Forwarded-For, which anyone can send, is ignored.
NUM_PROXIES = env_int("NUM_PROXIES", 0)
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

WHITENOISE_USE_FINDERS = DEBUG
