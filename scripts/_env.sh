# Shared by scripts/serve and scripts/test: a project venv with wardgate installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

ensure_venv() {
    # ensure_venv runtime|dev: the project venv with exactly the packages of
    # requirements/<lock>.txt (every file checked against its sha256), then wardgate
    # itself, editable, built with the locked setuptools (no build isolation, so
    # nothing unpinned is fetched). Refresh the locks with scripts/lock.
    local lock="$1" stamp file="$ROOT/requirements/$1.txt"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    stamp="$VENV/.wardgate-$(cat "$file" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$lock"
    if [ ! -f "$stamp" ]; then
        echo "==> installing requirements/$lock.txt and wardgate into $VENV" >&2
        local pip=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
        "${pip[@]}" install --require-hashes --no-deps -r "$file" >&2
        "${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT" >&2
        "${pip[@]}" check >&2
        rm -f "$VENV"/.wardgate-*
        touch "$stamp"
    fi
}

apt_install() {
    # apt_install COMMAND PACKAGE...: install Debian packages when COMMAND is missing.
    local cmd="$1"; shift
    if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: $cmd is missing; install: $*" >&2
        return 1
    fi
    echo "==> apt-get install $*" >&2
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _APT_UPDATED=1
    fi
    # policy-rc.d exit 101: no package starts its service (the system sshd, a
    # PostgreSQL cluster on 5432): the scripts start what they need themselves.
    local rc=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$rc" ]; then printf '#!/bin/sh\nexit 101\n' > "$rc"; chmod +x "$rc"; created=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
    if [ -n "$created" ]; then rm -f "$rc"; fi
}

ensure_ui_assets() {
    # ensure_ui_assets [dev]: the web UI's terminal replay uses asciinema-player's
    # prebuilt bundle from npm (pinned by src/wardgate/web/assets/package-lock.json); no
    # build step runs. "dev" adds axe-core, which the browser tests check pages with.
    local dir="$ROOT/src/wardgate/web/assets" want="asciinema-player/dist/bundle/asciinema-player.min.js"
    local omit=(--omit=dev)
    if [ "${1:-}" = dev ]; then want="axe-core/axe.min.js"; omit=(); fi
    if [ -f "$dir/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js" ] \
        && [ -f "$dir/node_modules/$want" ]; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        apt_install npm npm || { echo "warning: no npm: terminal replay in the web UI is off" >&2; return 0; }
    fi
    echo "==> npm ci (web UI assets)" >&2
    (cd "$dir" && npm ci "${omit[@]}" --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
}
