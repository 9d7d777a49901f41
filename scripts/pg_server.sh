# ensure_postgres: a PostgreSQL server on 127.0.0.1:5432 with user postgres (trust)
# and a database "test". Uses the one running; else starts the machine's cluster;
# else installs PostgreSQL and starts a throwaway one.
ensure_postgres() {
    local host=127.0.0.1 port=5432
    apt_install pg_isready postgresql-client
    if pg_isready -q -h "$host" -p "$port"; then :
    elif command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
        echo "==> starting the local PostgreSQL cluster" >&2
        local ver
        ver="$(pg_lsclusters -h | awk 'NR==1{print $1}')"
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    else
        echo "==> no PostgreSQL server: starting a throwaway one" >&2
        ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install initdb postgresql
        local bin data
        bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
        data="$(mktemp -d /tmp/wardgate-pg.XXXXXX)"
        chown postgres "$data" 2>/dev/null || true
        runuser -u postgres -- "$bin/initdb" -q -A trust -U postgres -D "$data/data" >&2
        runuser -u postgres -- "$bin/pg_ctl" -D "$data/data" -l "$data/log" -w \
            -o "-c listen_addresses=$host -p $port -k $data" start >&2
    fi
    for _ in $(seq 1 30); do
        pg_isready -q -h "$host" -p "$port" && break
        sleep 1
    done
    if ! pg_isready -q -h "$host" -p "$port"; then
        echo "error: no PostgreSQL server on $host:$port and none could be started" >&2
        return 1
    fi
    psql -h "$host" -p "$port" -U postgres -d postgres -Atqc "select 1 from pg_database where datname='test'" \
        | grep -q 1 || psql -h "$host" -p "$port" -U postgres -d postgres -qc "create database test"
}
