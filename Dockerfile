# One image for every predq process: the API, the workers, Flower and one-shot jobs
# (docker-compose.yml picks the command). Build: docker build -t predq .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREDQ_REGISTRY_ROOT=/registry \
    PREDQ_FILES_ROOT=/files \
    PREDQ_LOG_JSON=true

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY predq ./predq
RUN pip install ".[server]" \
    && useradd --system --uid 10001 --create-home --home-dir /home/predq predq \
    && mkdir -p /registry /files \
    && chown predq /registry /files

# Not root: Celery warns against it, and a model artifact is trusted code run by this user.
# /registry belongs to predq, so a fresh named volume mounted there is writable by the
# registry-init job (the api and the workers mount it read-only); /files (batch files) is
# written by the API and the workers.
USER predq
WORKDIR /home/predq
EXPOSE 8000 5555
CMD ["predq", "--help"]
