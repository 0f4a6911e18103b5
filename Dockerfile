# syntax=docker/dockerfile:1
# The provisioner as a small, non-root image. See docs/operations.md, "Docker".
#   docker build -t provisioner .
#   docker run --rm -e BRAZE_API_KEY -v provisioner-state:/var/lib/provisioner \
#     -v "$PWD/campaigns.csv:/in/campaigns.csv:ro" provisioner \
#     run /in/campaigns.csv --out /var/lib/provisioner/out
# No secret is baked in: the key comes at run time (-e BRAZE_API_KEY, a Kubernetes Secret,
# or a mounted file named by PROVISIONER_API_KEY_FILE).

ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: wheels for the provisioner and every dependency (binary wheels from the index;
# nothing is compiled, so no toolchain is needed).
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY provisioner ./provisioner
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: only the installed packages; the wheels are bind-mounted, never a layer.
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROVISIONER_STATE=/var/lib/provisioner/state.sqlite3
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels provisioner \
    && groupadd --system --gid 10001 provisioner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/provisioner --shell /usr/sbin/nologin provisioner \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/provisioner
# The state store (and, by convention, --out) lives here; mount a volume over it.
VOLUME ["/var/lib/provisioner"]
WORKDIR /var/lib/provisioner
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
ENTRYPOINT ["provisioner"]
CMD ["--help"]
