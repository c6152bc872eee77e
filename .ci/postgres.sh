# Sourced by .ci/run: install and start a throw-away PostgreSQL on loopback and
# export OPTISYNC_TEST_POSTGRES_DSN, so that the PostgreSQL tests run.
# Usage: source .ci/postgres.sh    (stop it with: optisync_postgres_stop)

optisync_postgres_start() {
    local bin
    if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        echo "== installing postgresql (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
    OPTISYNC_POSTGRES_DIR=$(mktemp -d /tmp/optisync-postgres.XXXXXX)
    chown postgres "$OPTISYNC_POSTGRES_DIR"
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # initdb refuses to run as root: the cluster belongs to the postgres user.
    runuser -u postgres -- "$bin/initdb" -D "$OPTISYNC_POSTGRES_DIR/data" -A trust -U postgres >/dev/null
    runuser -u postgres -- "$bin/pg_ctl" -D "$OPTISYNC_POSTGRES_DIR/data" -l "$OPTISYNC_POSTGRES_DIR/log" -w \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$OPTISYNC_POSTGRES_DIR" start >/dev/null
    OPTISYNC_POSTGRES_BIN=$bin
    export OPTISYNC_TEST_POSTGRES_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
    echo "== PostgreSQL on 127.0.0.1:$port ($OPTISYNC_POSTGRES_DIR)"
}

optisync_postgres_stop() {
    runuser -u postgres -- "$OPTISYNC_POSTGRES_BIN/pg_ctl" -D "$OPTISYNC_POSTGRES_DIR/data" -m fast stop >/dev/null || true
    rm -rf "$OPTISYNC_POSTGRES_DIR"
}

optisync_postgres_start
trap optisync_postgres_stop EXIT
