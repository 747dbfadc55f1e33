#!/usr/bin/env bash
# Start a local PostgreSQL server for the multi-worker search test and print its URL on stdout
# (everything else goes to stderr):
#
#   export DIP_TEST_POSTGRES_URL="$(.ci/postgres.sh)"
#
# Installs Debian's postgresql package when it is missing, creates (or reuses) the cluster
# "main" of the newest installed version, starts it listening on 127.0.0.1, and creates the
# role and database "dip" (password "dip"). Safe to run again. Needs root or sudo.
# Settings: DIP_PG_USER, DIP_PG_PASSWORD, DIP_PG_DB, DIP_PG_PORT (a new cluster's port).
set -euo pipefail

NAME="${DIP_PG_USER:-dip}"
PASSWORD="${DIP_PG_PASSWORD:-dip}"
DB="${DIP_PG_DB:-dip}"
NEW_PORT="${DIP_PG_PORT:-5432}"

log() { echo "postgres.sh: $*" >&2; }
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
as_postgres() { "${SUDO[@]}" runuser -u postgres -- "$@"; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq postgresql >&2
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION/main on port $NEW_PORT"
    "${SUDO[@]}" pg_createcluster "$VERSION" main --port "$NEW_PORT" >&2
fi
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')"
STATUS="$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')"
if [ "$STATUS" != "online" ]; then
    log "starting cluster $VERSION/main on 127.0.0.1:$PORT"
    "${SUDO[@]}" pg_ctlcluster "$VERSION" main start -o "-c listen_addresses=127.0.0.1" >&2
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { log "the server does not answer on 127.0.0.1:$PORT"; exit 1; }

as_postgres psql -q -p "$PORT" -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$NAME') THEN
        CREATE ROLE "$NAME" LOGIN PASSWORD '$PASSWORD';
    ELSE
        ALTER ROLE "$NAME" LOGIN PASSWORD '$PASSWORD';
    END IF;
END
\$\$;
SQL
if ! as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    as_postgres createdb -p "$PORT" -O "$NAME" "$DB" >&2
fi
log "ready"
echo "postgresql+psycopg2://$NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
