#!/usr/bin/env bash
# Build the wardgate image from the Dockerfile and run it on a real container runtime
# (podman, with runc), on a machine that cannot pull base images: the bases are made
# here with debootstrap (Debian bookworm + Debian's Python 3.11 standing in for
# python:3.11-slim; that + Debian's npm for node:20-slim). docs/deployment.md records
# what this showed.
#
#   sudo deploy/docker/verify-with-podman.sh          # needs root, podman, runc, debootstrap
#
# Env: EXTRA_CA_DIR   a folder of extra CA certificates (*.crt) the bases must trust (a
#                     TLS-inspecting egress proxy); they go into the local bases only,
#                     never into the Dockerfile.
#      PG_PORT        a PostgreSQL server on 127.0.0.1 with trust auth (default 5432)
#      KEEP=1         keep the bases between runs (they take minutes to make)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK:-/var/tmp/wardgate-podman}"
PG_PORT="${PG_PORT:-5432}"
IMAGE=localhost/wardgate:verify
# crun 1.8 refuses hybrid cgroup hosts; limits stay within the caller's (no CAP_SYS_RESOURCE).
RUNTIME=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
mkdir -p "$WORK"
step() { printf '\n==> %s\n' "$*"; }
ok() { printf 'VERIFIED: %s\n' "$*"; }

base() {  # base NAME PACKAGES...
    local name="$1"; shift
    if [ -n "${KEEP:-}" ] && podman image exists "localhost/wardgate-base-$name:bookworm"; then
        return
    fi
    step "debootstrap bookworm + $* -> localhost/wardgate-base-$name:bookworm"
    local rootfs="$WORK/$name-rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" bookworm "$rootfs" \
        http://deb.debian.org/debian > "$WORK/$name-debootstrap.log"
    if [ -n "${EXTRA_CA_DIR:-}" ]; then
        cp "$EXTRA_CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates > /dev/null
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import \
        --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
        --change "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt" \
        - "localhost/wardgate-base-$name:bookworm" > /dev/null
}

base python python3 python3-venv ca-certificates
if [ -z "${KEEP:-}" ] || ! podman image exists localhost/wardgate-base-node:bookworm; then
    # debootstrap resolves npm's ~400 dependencies poorly: apt does it, in the python base.
    step "localhost/wardgate-base-node:bookworm: the python base + Debian's npm"
    podman rm -f wardgate-base-node > /dev/null 2>&1 || true
    podman run "${RUNTIME[@]}" --network=host --name wardgate-base-node \
        localhost/wardgate-base-python:bookworm sh -c 'apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm \
        && rm -rf /var/lib/apt/lists/*' > "$WORK/node-base.log" 2>&1
    podman commit wardgate-base-node localhost/wardgate-base-node:bookworm > /dev/null
    podman rm wardgate-base-node > /dev/null
fi

step "podman build (Dockerfile as is; only the bases are build arguments)"
podman build "${RUNTIME[@]}" --network=host --format docker \
    --build-arg PYTHON_IMAGE=localhost/wardgate-base-python:bookworm \
    --build-arg NODE_IMAGE=localhost/wardgate-base-node:bookworm \
    -t "$IMAGE" "$ROOT" > "$WORK/build.log"
ok "the multi-stage build: npm ci (assets), pip install --require-hashes (runtime lock), wheel"

inspect() { podman image inspect "$IMAGE" --format "$1"; }
[ "$(inspect '{{.Config.User}}')" = "10001:10001" ] && ok "USER 10001:10001"
[ "$(inspect '{{json .Config.Entrypoint}}{{json .Config.Cmd}}')" = '["wardgate"]["serve"]' ] \
    && ok "ENTRYPOINT wardgate, CMD serve"
inspect '{{json .Config.Healthcheck.Test}}' | grep -q '"wardgate","healthcheck"' && ok "HEALTHCHECK"
podman run --rm "${RUNTIME[@]}" --entrypoint sh "$IMAGE" -c \
    'for t in gcc cc c++ make ld pip; do if command -v $t; then exit 1; fi; done' \
    && ok "no compiler, linker, make or pip on the final image's PATH"
echo "image size: $(inspect '{{.Size}}') bytes"

step "run: read-only root, all capabilities dropped, master key as a file, 2 workers"
API=18080 PG=25432
KEYFILE="$WORK/master.key"; CONF="$WORK/wardgate.yaml"
python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$KEYFILE"
chmod 0444 "$KEYFILE"
sed -e "s/api: 0.0.0.0:8080/api: 127.0.0.1:$API/" -e "s/postgres: 0.0.0.0:15432/postgres: 127.0.0.1:$PG/" \
    "$ROOT/deploy/docker/wardgate.yaml" > "$CONF"
cat >> "$CONF" <<EOF
workers: 2
limits: {drain_timeout: 20s}
groups: {engineers: {}}
principals: {dev: {kind: user, groups: [engineers]}}
connections:
  local:
    type: postgres
    upstream: {host: 127.0.0.1, port: $PG_PORT, database: postgres, user: postgres, tls: disable}
    roles: {engineers: engineer}
roles: {engineer: {read: allow, write: allow}}
EOF
podman rm -f wardgate-verify > /dev/null 2>&1 || true
podman volume rm -f wardgate-verify > /dev/null 2>&1 || true
podman run -d --name wardgate-verify "${RUNTIME[@]}" --network=host \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -v wardgate-verify:/var/lib/wardgate \
    -v "$CONF:/etc/wardgate/wardgate.yaml:ro" \
    -v "$KEYFILE:/run/secrets/wardgate_master_key:ro" \
    "$IMAGE" > /dev/null
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$API/readyz" > /dev/null && break
    sleep 1
done
curl -sf "http://127.0.0.1:$API/readyz" && echo && ok "/readyz 200 (store, listeners)"
podman healthcheck run wardgate-verify && ok "podman healthcheck run: healthy"
podman exec wardgate-verify sh -c 'id -u; touch /etc/x 2>/dev/null && exit 1; touch /var/lib/wardgate/x /tmp/x' \
    | grep -qx 10001 && ok "runs as 10001; root read-only; the volume and /tmp writable"
TOKEN=$(podman exec wardgate-verify wardgate token create dev | tail -1)
DSN="postgresql://dev:$TOKEN@127.0.0.1:$PG/local?sslmode=require"
psql "$DSN" -Atc "select 'through the container'" | grep -q "through the container" \
    && ok "psql through the gateway (TLS, SCRAM, a dialled upstream)"
for _ in 1 2 3 4 5 6; do psql "$DSN" -Atc "select 1" > /dev/null; done
curl -s "http://127.0.0.1:$API/metrics" | grep -E '^wardgate_sessions_total\{protocol="postgres"\} 7.0$' > /dev/null \
    && ok "/metrics adds up both workers (7 sessions)"

step "SIGTERM with a transaction open: it finishes, then the container exits 0"
psql "$DSN" -Atc "begin; select pg_sleep(4); select 'drained'; commit;" > "$WORK/drain.out" 2>&1 &
sleep 1.5
podman stop -t 40 wardgate-verify > /dev/null
wait $! && grep -q drained "$WORK/drain.out" && ok "the open transaction completed during the drain"
[ "$(podman inspect wardgate-verify --format '{{.State.ExitCode}}')" = 0 ] && ok "exit code 0"
podman logs wardgate-verify 2>&1 | grep -q "draining" && ok "the log says it drained"
podman rm wardgate-verify > /dev/null
podman volume rm wardgate-verify > /dev/null
echo; echo "all checks passed"
