#!/usr/bin/env bash
# An MLflow tracking server for a team or a cluster: Debian's PostgreSQL as the backend store (tracking and
# registry) and an artifact directory the server itself serves (--serve-artifacts), both bound to 127.0.0.1.
# PostgreSQL refuses to run as root: as root, it runs as the `postgres` user the Debian package creates.
# The database password lives in DIR/pgpass (libpq's password file, mode 600), never on a command line.
#
#   scripts/mlflow-server.sh start  [--dir DIR] [--port PORT] [--pg-port PORT]
#                                   initdb DIR/postgres once, start PostgreSQL and `mlflow server`, wait for
#                                   /health, print AWO_MLFLOW_TRACKING_URI=http://127.0.0.1:PORT (eval-able)
#   scripts/mlflow-server.sh stop   [--dir DIR]   stop both (the data stays; a later start reuses it)
#   scripts/mlflow-server.sh status [--dir DIR]   what runs; exit 0 when both do, 3 otherwise
#
# Defaults: DIR=$AWO_DATA_DIR/mlflow-server (AWO_DATA_DIR defaults to ./data), PORT 5000, PG_PORT 5433.
# AWO_MLFLOW_WORKERS (2) sets the server's worker count, AWO_MLFLOW_START_TIMEOUT_S (180) the wait for
# /health (the first start creates MLflow's schema in PostgreSQL), AWO_PG_BIN the PostgreSQL binaries.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MLFLOW="${AWO_MLFLOW_BIN:-$ROOT/.venv/bin/mlflow}"
WORKERS="${AWO_MLFLOW_WORKERS:-2}"
START_TIMEOUT_S="${AWO_MLFLOW_START_TIMEOUT_S:-180}"
PG_USER=postgres     # the database role MLflow connects as (and, when run as root, the system user)
PG_DB=mlflow

die() { echo "mlflow-server.sh: $*" >&2; exit 1; }
log() { echo "mlflow-server.sh: $*" >&2; }

usage() {
  echo "usage: scripts/mlflow-server.sh {start|stop|status} [--dir DIR] [--port PORT] [--pg-port PORT]" >&2
  exit 2
}

COMMAND="${1:-}"
[ $# -gt 0 ] && shift
DIR="${AWO_DATA_DIR:-./data}/mlflow-server"
PORT=5000
PG_PORT=5433
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
    --port) [ $# -ge 2 ] || usage; PORT="$2"; shift 2 ;;
    --pg-port) [ $# -ge 2 ] || usage; PG_PORT="$2"; shift 2 ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
for port in "$PORT" "$PG_PORT"; do
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "port $port is not 1-65535"
done
[ "$PORT" != "$PG_PORT" ] || die "--port and --pg-port are both $PORT"
DIR="$(realpath -m "$DIR")"
PGDATA="$DIR/postgres"
PGPASS="$DIR/pgpass"
PG_LOG="$DIR/postgres.log"
MLFLOW_LOG="$DIR/mlflow.log"
MLFLOW_PID="$DIR/mlflow.pid"
PG_PID="$DIR/postgres.pid"
PORTS="$DIR/ports"      # the ports of the running pair, for status and for a start that finds it running

# The newest PostgreSQL of Debian's layout (/usr/lib/postgresql/<major>/bin), or AWO_PG_BIN.
pg_bin() {
  if [ -n "${AWO_PG_BIN:-}" ]; then
    [ -x "$AWO_PG_BIN/pg_ctl" ] || die "no pg_ctl in AWO_PG_BIN=$AWO_PG_BIN"
    echo "$AWO_PG_BIN"; return 0
  fi
  local found
  found="$(compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' | sort -V | tail -n1 || true)"
  [ -n "$found" ] || die "no PostgreSQL binaries in /usr/lib/postgresql/*/bin: install Debian's postgresql (make services)"
  dirname "$found"
}

AS_ROOT=0
[ "$(id -u)" = 0 ] && AS_ROOT=1
# Run a PostgreSQL server binary as the postgres system user when we are root.
as_pg() {
  if [ "$AS_ROOT" = 1 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

psql_pg() {
  PGPASSFILE="$PGPASS" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$@"
}

init_postgres() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  local password t=$SECONDS
  if [ "$AS_ROOT" = 1 ]; then
    getent passwd "$PG_USER" >/dev/null || die "no '$PG_USER' system user (Debian's postgresql package creates it)"
    # the postgres user must reach DIR through every parent folder (a private /tmp/pytest-of-root does not)
    runuser -u "$PG_USER" -- test -x "$DIR" \
      || die "the '$PG_USER' system user cannot reach $DIR (a parent folder is private); choose another --dir"
  fi
  password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  rm -rf "$PGDATA"; mkdir -p "$PGDATA"; chmod 700 "$PGDATA"
  (umask 077; echo "$password" >"$PGDATA.pw")
  if [ "$AS_ROOT" = 1 ]; then chown "$PG_USER": "$PGDATA" "$PGDATA.pw"; fi
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U "$PG_USER" --pwfile="$PGDATA.pw" --auth-local=peer \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
    || { rm -f "$PGDATA.pw"; die "initdb failed; see $DIR/initdb.log"; }
  rm -f "$PGDATA.pw"
  # TCP on the loopback only, no Unix socket (no /var/run/postgresql needed), a small footprint.
  cat >>"$PGDATA/postgresql.conf" <<'EOF'

# scripts/mlflow-server.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 50
shared_buffers = 32MB
EOF
  (umask 077; echo "127.0.0.1:*:*:$PG_USER:$password" >"$PGPASS")
  log "PostgreSQL cluster created in $PGDATA ($((SECONDS - t)) s)"
}

start_postgres() {
  if pg_running; then  # left running by a half-finished start: MLflow must use its port
    PG_PORT="$(sed -n 4p "$PGDATA/postmaster.pid")"
    return 0
  fi
  [ -f "$PGPASS" ] || die "$PGPASS is missing: the password of $PGDATA is lost (remove $PGDATA to start afresh)"
  : >>"$PG_LOG"
  if [ "$AS_ROOT" = 1 ]; then chown "$PG_USER": "$PG_LOG"; fi
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -o "-p $PG_PORT" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start on 127.0.0.1:$PG_PORT; see $PG_LOG"
  head -n1 "$PGDATA/postmaster.pid" >"$PG_PID"
  if [ "$(psql_pg -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    psql_pg -d postgres -c "CREATE DATABASE $PG_DB" >/dev/null
  fi
}

# Returns non-zero with a one-line message (the caller stops PostgreSQL again).
start_mlflow() {
  if pid_alive "$MLFLOW_PID"; then return 0; fi
  mkdir -p "$DIR/artifacts"
  # setsid: the server and its workers are one process group, which stop signals as a whole.
  # The backend URI carries no password (libpq reads PGPASSFILE).
  PGPASSFILE="$PGPASS" setsid "$MLFLOW" server \
    --backend-store-uri "postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB" \
    --serve-artifacts --artifacts-destination "$DIR/artifacts" --default-artifact-root mlflow-artifacts:/ \
    --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" </dev/null >>"$MLFLOW_LOG" 2>&1 &
  echo $! >"$MLFLOW_PID"
  local waited=0
  until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
    if ! pid_alive "$MLFLOW_PID"; then
      rm -f "$MLFLOW_PID"
      log "mlflow server exited before answering; see $MLFLOW_LOG"
      return 1
    fi
    if [ "$waited" -ge "$((START_TIMEOUT_S * 2))" ]; then
      stop_mlflow
      log "mlflow server did not answer /health within $START_TIMEOUT_S s; see $MLFLOW_LOG"
      return 1
    fi
    sleep 0.5; waited=$((waited + 1))
  done
}

stop_mlflow() {
  pid_alive "$MLFLOW_PID" || { rm -f "$MLFLOW_PID"; return 0; }
  local pid i
  pid="$(cat "$MLFLOW_PID")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$MLFLOW_PID"
}

stop_postgres() {
  if pg_running; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null || die "PostgreSQL did not stop; see $PG_LOG"
  fi
  rm -f "$PG_PID"
}

start() {
  local t=$SECONDS
  PGBIN="$(pg_bin)"
  if pid_alive "$MLFLOW_PID" && pg_running && [ -f "$PORTS" ]; then
    read -r PORT PG_PORT <"$PORTS"
    log "already running (PostgreSQL on 127.0.0.1:$PG_PORT, data in $DIR)"
  else
    command -v curl >/dev/null 2>&1 || die "curl is needed to wait for the server's /health"
    [ -x "$MLFLOW" ] || die "no mlflow at $MLFLOW: run make (it installs .venv)"
    if ! pid_alive "$MLFLOW_PID" && port_in_use "$PORT"; then die "port $PORT (--port) is taken on 127.0.0.1"; fi
    if ! pg_running && port_in_use "$PG_PORT"; then die "port $PG_PORT (--pg-port) is taken on 127.0.0.1"; fi
    mkdir -p "$DIR"
    init_postgres
    start_postgres
    if ! start_mlflow; then stop_postgres; exit 1; fi
    echo "$PORT $PG_PORT" >"$PORTS"
    log "MLflow on http://127.0.0.1:$PORT (backend PostgreSQL 127.0.0.1:$PG_PORT/$PG_DB, artifacts $DIR/artifacts, logs $DIR/*.log), ready in $((SECONDS - t)) s"
  fi
  echo "AWO_MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
}

stop() {
  PGBIN="$(pg_bin)"
  stop_mlflow
  stop_postgres
  rm -f "$PORTS"
  log "stopped (data kept in $DIR)"
}

status() {
  local code=0 ports=""
  PGBIN="$(pg_bin)"
  [ -f "$PORTS" ] && ports="$(cat "$PORTS")"
  if pid_alive "$MLFLOW_PID"; then
    echo "mlflow: running (pid $(cat "$MLFLOW_PID"), port ${ports%% *})"
  else
    echo "mlflow: stopped"; code=3
  fi
  if pg_running; then
    echo "postgres: running (pid $(head -n1 "$PGDATA/postmaster.pid"), port ${ports##* })"
  else
    echo "postgres: stopped"; code=3
  fi
  return "$code"
}

case "$COMMAND" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
