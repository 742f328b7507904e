# The factory in a container. It installs through scripts/install.sh, exactly like the README's
# commands and CI, so the image and a developer's .venv hold the same pinned versions.
# BASE: any Debian bookworm image with Python 3.11 as `python` (scripts/build-images.sh makes one with
# debootstrap where no image registry is reachable).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg

WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY scripts/ scripts/
COPY factory/ factory/
COPY configs/ configs/
COPY params.yaml dvc.yaml ./
RUN ./scripts/install.sh - \
    && useradd --create-home --uid 10001 factory \
    && chown -R factory /app

USER 10001
# Mount a work folder here: data/, models/, bundles/, mlruns/ are written under it.
WORKDIR /work
ENTRYPOINT ["factory"]
CMD ["--help"]
