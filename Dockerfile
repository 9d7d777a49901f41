# wardgate's container image (docs/deployment.md):
#   docker build -t wardgate .
#   docker run --read-only --tmpfs /tmp -v wardgate:/var/lib/wardgate \
#     -e WARDGATE_MASTER_KEY="$(openssl rand -base64 32)" -p 8080:8080 -p 15432:15432 wardgate
# Mount your configuration at /etc/wardgate/wardgate.yaml. The bases are build arguments
# so that an air-gapped build can name its own mirror of the same images.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim
# runtime: the gateway and a PostgreSQL store; runtime-otel: OpenTelemetry traces too.
ARG WARDGATE_LOCK=runtime

# -- the web UI's terminal replay: asciinema-player's prebuilt bundle, pinned by npm's lock
FROM ${NODE_IMAGE} AS assets
WORKDIR /assets
COPY src/wardgate/web/assets/package.json src/wardgate/web/assets/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts --loglevel=error

# -- the locked dependency set (every file checked against its sha256), then wardgate
FROM ${PYTHON_IMAGE} AS build
ARG WARDGATE_LOCK
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/wardgate
COPY requirements/${WARDGATE_LOCK}.txt /tmp/requirements.txt
RUN /opt/wardgate/bin/python -m pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md LICENSE /tmp/wardgate/
COPY src /tmp/wardgate/src
COPY --from=assets /assets/node_modules /tmp/wardgate/src/wardgate/web/assets/node_modules
# --no-build-isolation: built with the locked setuptools just installed, nothing unpinned.
RUN /opt/wardgate/bin/python -m pip install --no-cache-dir --no-deps --no-build-isolation /tmp/wardgate \
    && /opt/wardgate/bin/python -m pip check \
    && /opt/wardgate/bin/python -m pip uninstall --yes pip \
    && /opt/wardgate/bin/wardgate --version

# -- what runs: the base, the venv, a user, no compiler, no package manager's caches
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="wardgate" \
      org.opencontainers.image.description="Segregation of duties for AI agents: a protocol-aware gateway in front of databases and hosts" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 wardgate \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/wardgate --no-create-home \
       --shell /usr/sbin/nologin wardgate \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/wardgate \
    && install -d -m 0755 /etc/wardgate
COPY --from=build /opt/wardgate /opt/wardgate
COPY deploy/docker/wardgate.yaml /etc/wardgate/wardgate.yaml
ENV PATH=/opt/wardgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WARDGATE_CONFIG=/etc/wardgate/wardgate.yaml
# The store (SQLite), the generated TLS certificate and SSH host key: the only state.
VOLUME ["/var/lib/wardgate"]
WORKDIR /var/lib/wardgate
USER 10001:10001
# API (web UI, REST, MCP, probes, metrics), PostgreSQL, SSH
EXPOSE 8080 15432 12222
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["wardgate", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wardgate"]
CMD ["serve"]
