# syntax=docker/dockerfile:1
# One image for the gateway and the three actors (compose.yaml picks the command).
# Core dependencies only: the `servers` extra (local NATS/Redis/SeaweedFS/Triton binaries) and the `models`
# extra (torch, export tools) are not needed in a container that talks to those servers over the network.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# README.md* : pyproject names a readme, and the build works with or without it
COPY pyproject.toml README.md* ./
COPY actors/ actors/
COPY gateway/ gateway/
COPY ops/ ops/
RUN /opt/venv/bin/pip install . && /opt/venv/bin/pip check

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MESH_DATA_DIR=/app/var
RUN groupadd --system --gid 10001 mesh \
 && useradd --system --uid 10001 --gid mesh --home-dir /app --no-create-home --shell /usr/sbin/nologin mesh
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The sources as well as the installed package: `python -m` runs from /app, and files that are not Python
# (the gateway's web page, model backend files) are not in the wheel. Owned by root: read-only to the app.
COPY actors/ actors/
COPY gateway/ gateway/
COPY ops/ ops/
COPY nats.conf ./
RUN mkdir -p /app/var && chown mesh:mesh /app/var
USER mesh:mesh
EXPOSE 8080 8091 8092 8093
CMD ["python", "-m", "gateway"]
