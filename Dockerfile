# syntax=docker/dockerfile:1
# The `housing` CLI as an image: `docker run IMAGE` serves the champion on port 8000;
# `docker run IMAGE train` (or any other subcommand) runs that stage instead.

# The base, pinned by digest (the multi-arch index of python:3.11-slim) so a rebuild on a real
# registry gets the same bytes; refresh it with `docker buildx imagetools inspect python:3.11-slim`.
# Where no registry can be reached, scripts/container-base.sh makes a stand-in from Debian's
# packages and the build is pointed at it: --build-arg PYTHON_IMAGE="$(scripts/container-base.sh)".
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- build: turn the source tree into a wheel (tests and tooling stay behind) ----
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY housing_mlops ./housing_mlops
# Beside the wheel, its runtime requirements (Requires-Dist without extras): the runtime stage
# installs them in a layer of their own, which a rebuild after a code change reuses (the
# dependencies are ~875 MB and minutes of pip; the wheel is seconds).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist/wheel . \
    && python -c "import email, glob, zipfile; \
w = zipfile.ZipFile(glob.glob('/dist/wheel/*.whl')[0]); \
meta = email.message_from_bytes(w.read(next(n for n in w.namelist() if n.endswith('.dist-info/METADATA')))); \
print('\n'.join(r for r in meta.get_all('Requires-Dist') if 'extra ==' not in r))" \
    > /dist/requirements.txt

# ---- runtime: the wheel and its dependencies, run as an unprivileged user ----
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOUSING_SERVE_PORT=8000 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_DISABLE_TELEMETRY=true
# With a read-only root (`--read-only`, only volumes and a tmpfs on /tmp writable) nothing may
# write under $HOME (/app): matplotlib's font cache goes to /tmp, and MLflow's usage telemetry
# (which also writes ~/.config/mlflow) is off, as the image cannot reach the internet anyway.

# LightGBM's shared library links against the system OpenMP runtime (libgomp1).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 housing \
    && useradd --system --uid 10001 --gid housing --home-dir /app --shell /usr/sbin/nologin housing

WORKDIR /app
# The dependency versions the tests ran against (requirements.lock, `make lock`).
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /dist/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -c /tmp/requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --from=build /dist/wheel/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps -c /tmp/requirements.lock /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/requirements.lock
COPY configs/ ./configs/
# Relative paths in configs/default.yaml (data/, mlruns/, reports/) resolve under /app.
RUN mkdir -p data mlruns reports && chown -R housing:housing /app

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HOUSING_SERVE_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["housing"]
CMD ["serve", "--host", "0.0.0.0"]
