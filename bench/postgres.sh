#!/usr/bin/env bash
# PostgreSQL through Legate vs HAProxy vs no proxy: pgbench's select-only workload against a
# replica directly, through Legate's postgres listener and through HAProxy in `mode tcp`, both
# proxies balancing over the same two streaming replicas. Runs are interleaved (the order
# rotates each round) and the median TPS and latency of each target are printed.
#
# Usage: bench/postgres.sh            (from anywhere; see bench/README.md)
# Settings (environment):
#   DURATION=10  seconds per pgbench run          CLIENTS=8   pgbench -c
#   THREADS=2    pgbench -j                        RUNS=3      runs per target
#   SCALE=10     pgbench -i -s                     CONNECT=0   1: a new connection per
#                                                              transaction (pgbench -C)
#   LEGATE=path  use this legate binary instead of building target/release/legate
#   TARGETS="direct legate haproxy"                KEEP=0      1: keep the work directory
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
SCALE=${SCALE:-10}
CONNECT=${CONNECT:-0}
TARGETS=${TARGETS:-direct legate haproxy}
KEEP=${KEEP:-0}

repo=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "bench/postgres.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# --- tools ---------------------------------------------------------------------------------
pgbin=${LEGATE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] ||
  die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
pgbench=$(command -v pgbench || echo "$pgbin/pgbench")
psql=$(command -v psql || echo "$pgbin/psql")
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
case " $TARGETS " in *" haproxy "*) [ -x "$haproxy" ] || die "haproxy not found (apt-get install haproxy)";; esac

# PostgreSQL refuses to run as root: server commands run as `postgres` then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A port nothing listens on (a random one, checked).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

# --- work directory and cleanup ------------------------------------------------------------
work=$(mktemp -d /tmp/legate-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$work"
pids=()
servers=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for data in "${servers[@]}"; do
    (cd "$work" && as_pg "$pgbin/pg_ctl" -D "$data" stop -m immediate -w >/dev/null 2>&1) || true
  done
  if [ "$KEEP" = 1 ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work"

# --- Legate ---------------------------------------------------------------------------------
if [ -n "${LEGATE:-}" ]; then
  legate=$LEGATE
else
  log "building legate (release)"
  (cd "$repo" && cargo build --release -p legate --bin legate >&2)
  legate="$repo/target/release/legate"
fi
[ -x "$legate" ] || die "no legate binary at $legate"

# --- PostgreSQL: a primary and two streaming replicas ----------------------------------------
opts="-c listen_addresses=127.0.0.1 -c wal_level=replica -c max_wal_senders=10 -c hot_standby=on
      -c max_connections=100 -c shared_buffers=128MB -c fsync=off"
start_pg() { # name port
  servers+=("$work/$1")
  as_pg "$pgbin/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w -t 60 start \
    -o "-p $2 -k $work $(echo $opts)" >/dev/null || { cat "$work/$1.log" >&2; die "$1 did not start"; }
  for _ in $(seq 100); do
    "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$2" && return
    sleep 0.1
  done
  die "$1 is not accepting connections"
}

primary=$(free_port)
log "initdb; primary on $primary"
as_pg "$pgbin/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$work/primary" >/dev/null
start_pg primary "$primary"
replicas=()
for i in 1 2; do
  port=$(free_port)
  log "replica$i on $port"
  as_pg "$pgbin/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$work/replica$i" -R -X stream
  start_pg "replica$i" "$port"
  replicas+=("$port")
done

log "pgbench -i -s $SCALE on the primary"
"$pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$primary" -U postgres postgres >/dev/null 2>&1
lsn=$("$psql" -X -At -h 127.0.0.1 -p "$primary" -U postgres -c "SELECT pg_current_wal_lsn()" postgres)
for port in "${replicas[@]}"; do
  for _ in $(seq 600); do
    ok=$("$psql" -X -At -h 127.0.0.1 -p "$port" -U postgres postgres \
      -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")
    [ "$ok" = t ] && break
    sleep 0.1
  done
  [ "$ok" = t ] || die "replica on $port did not catch up"
done

# --- the proxies -----------------------------------------------------------------------------
legate_port=$(free_port)
admin_port=$(free_port)
cat >legate.yaml <<EOF
admin: { listen: 127.0.0.1:$admin_port }
access_log: { enabled: false }
listeners:
  - name: pg
    listen: 127.0.0.1:$legate_port
    tcp: { cluster: replicas, protocol: postgres, idle_timeout: 1h }
clusters:
  - name: replicas
    lb: least_connections
    connect_timeout: 1s
    health_check:
      postgres: { user: postgres, database: postgres }
      interval: 2s
      timeout: 1s
    endpoints: ["127.0.0.1:${replicas[0]}", "127.0.0.1:${replicas[1]}"]
EOF
RUST_LOG=warn "$legate" run --config legate.yaml >legate.out 2>legate.log &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$admin_port/ready" >/dev/null || { cat legate.log >&2; die "legate is not ready"; }

haproxy_port=$(free_port)
cat >haproxy.cfg <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
frontend pg
  bind 127.0.0.1:$haproxy_port
  default_backend replicas
backend replicas
  balance leastconn
  server replica1 127.0.0.1:${replicas[0]} check inter 2s
  server replica2 127.0.0.1:${replicas[1]} check inter 2s
EOF
if [ -x "$haproxy" ]; then
  "$haproxy" -f haproxy.cfg -db >haproxy.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$haproxy_port") 2>/dev/null && break
    sleep 0.1
  done
fi

port_of() {
  case $1 in
    direct) echo "${replicas[0]}" ;;
    legate) echo "$legate_port" ;;
    haproxy) echo "$haproxy_port" ;;
    *) die "unknown target $1" ;;
  esac
}

# --- runs ------------------------------------------------------------------------------------
flags=(-S -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION")
[ "$CONNECT" = 1 ] && flags+=(-C)
read -r -a targets <<<"$TARGETS"
declare -A tps lat
log "pgbench ${flags[*]}: $RUNS runs per target, interleaved"
for run in $(seq "$RUNS"); do
  n=${#targets[@]}
  for k in $(seq 0 $((n - 1))); do
    t=${targets[$(((k + run - 1) % n))]}
    out=$("$pgbench" "${flags[@]}" -h 127.0.0.1 -p "$(port_of "$t")" -U postgres postgres 2>&1) ||
      { echo "$out" >&2; die "pgbench against $t failed"; }
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    [ "${failed:-0}" = 0 ] || { echo "$out" >&2; die "$t: $failed failed transactions"; }
    t_tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    t_lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
    printf 'run %d  %-8s tps %10.1f  latency %7.3f ms\n' "$run" "$t" "$t_tps" "$t_lat" >&2
    tps[$t]+="$(printf '%.1f' "$t_tps") "
    lat[$t]+="$(printf '%.3f' "$t_lat") "
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "pgbench ${flags[*]}, scale $SCALE, $RUNS runs each; $(nproc) CPUs; $("$pgbench" --version)"
printf '%-8s %12s %14s   %s\n' target "median tps" "median lat ms" "all tps"
base=""
for t in "${targets[@]}"; do
  m_tps=$(median <<<"${tps[$t]}")
  m_lat=$(median <<<"${lat[$t]}")
  [ "$t" = direct ] && base=$m_tps
  rel=""
  [ -n "$base" ] && [ "$t" != direct ] && rel=$(awk -v a="$m_tps" -v b="$base" 'BEGIN {printf "  (%.0f%% of direct)", 100 * a / b}')
  printf '%-8s %12.1f %14.3f   %s%s\n' "$t" "$m_tps" "$m_lat" "${tps[$t]}" "$rel"
done
