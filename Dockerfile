# syntax=docker/dockerfile:1
# The provisioner as a small, non-root image. See docs/operations.md, "Docker".
#   docker build -t provisioner .
#   docker run --rm -e BRAZE_API_KEY -v provisioner-state:/var/lib/provisioner \
#     -v "$PWD/campaigns.csv:/in/campaigns.csv:ro" provisioner \
#     run /in/campaigns.csv --out /var/lib/provisioner/out
# No secret is baked in: the key comes at run time (-e BRAZE_API_KEY, a Kubernetes Secret,
# or a mounted file named by PROVISIONER_API_KEY_FILE).
# Dependencies are the exact versions pinned in deploy/constraints.txt (the package with
# its `speed` extra, resolved; `make constraints` regenerates it), installed in layers of
# their own: a change to the code rebuilds only the last layer of each stage.

ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: wheels, dependencies first (binary wheels from the index; nothing is compiled,
# so no toolchain is needed).
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY deploy/constraints.txt ./
RUN pip wheel --no-cache-dir --only-binary=:all: --wheel-dir /wheels/deps \
    --requirement constraints.txt
# Then the code: only this layer and the next are rebuilt when it changes.
COPY pyproject.toml README.md ./
COPY provisioner ./provisioner
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

# Stage 2: only the installed packages; the wheels are bind-mounted, never a layer.
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROVISIONER_STATE=/var/lib/provisioner/state.sqlite3
RUN groupadd --system --gid 10001 provisioner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/provisioner --shell /usr/sbin/nologin provisioner \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/provisioner
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    --mount=type=bind,from=build,source=/src/constraints.txt,target=/tmp/constraints.txt \
    pip install --no-cache-dir --no-index --find-links=/wheels/deps \
    --requirement /tmp/constraints.txt
# The package with its speed extra (uvloop), resolved against what is installed: pip
# fails here, not at run time, if pyproject.toml needs something the constraints lack.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/constraints.txt,target=/tmp/constraints.txt \
    pip install --no-cache-dir --no-index --find-links=/wheels/deps --find-links=/wheels/app \
    --constraint /tmp/constraints.txt "provisioner[speed]" \
    && pip check
# The state store (and, by convention, --out) lives here; mount a volume over it.
VOLUME ["/var/lib/provisioner"]
WORKDIR /var/lib/provisioner
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
ENTRYPOINT ["provisioner"]
CMD ["--help"]
