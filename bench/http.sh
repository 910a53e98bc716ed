#!/usr/bin/env bash
# HTTP proxying cost: Legate against nginx as a reverse proxy, each pinned to one core, driven
# by wrk with keep-alive from the other core, to the same upstream (an nginx returning a small
# static body). Prints requests/s and CPU microseconds per request for each proxy (medians).
#
#   bench/http.sh                 # defaults: 3 runs of 10 s, 64 connections
#   RUNS=5 DURATION=20 CONNS=128 bench/http.sh
#
# Needs nginx and wrk (apt-get install nginx wrk) and a release build of Legate (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

command -v nginx >/dev/null && command -v wrk >/dev/null || {
  echo "needs nginx and wrk: apt-get install -y nginx wrk" >&2; exit 1; }
cargo build --release -q -p legate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); LEG=$(free_port); ADMIN=$(free_port)

cat > "$work/upstream.conf" <<CONF
daemon off; worker_processes 1; pid $work/up.pid; error_log $work/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from the upstream\n"; } } }
CONF
cat > "$work/proxy.conf" <<CONF
daemon off; worker_processes 1; pid $work/px.pid; error_log $work/px.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/legate.yaml" <<CONF
admin: { listen: 127.0.0.1:$ADMIN }
runtime: { workers: 1 }
access_log: { enabled: false }
listeners: [{ name: front, listen: 127.0.0.1:$LEG, http: { route_table: main } }]
route_tables:
  main: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, cluster: up }] }] }
clusters: [{ name: up, lb: round_robin, endpoints: ["127.0.0.1:$UP"] }]
CONF

taskset -c "$LOAD_CPU" nginx -c "$work/upstream.conf" -p "$work" &
taskset -c "$PROXY_CPU" nginx -c "$work/proxy.conf" -p "$work" &
taskset -c "$PROXY_CPU" target/release/legate run --config "$work/legate.yaml" 2>"$work/legate.err" &
LEGATE_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null && break; sleep 0.1; done

# CPU time (user+system, in clock ticks) of a process and its threads.
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
nginx_worker() { pgrep -P "$(cat "$work/px.pid")" | head -1; }

run() { # name port pid
  local before after out rps
  before=$(ticks "$3")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$2/" 2>&1)
  after=$(ticks "$3")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  awk -v n="$1" -v r="$rps" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v d="$DURATION" \
    'BEGIN { printf "%s %.0f %.2f\n", n, r, (t / hz) * 1e6 / (r * d) }'
}

results=()
for i in $(seq "$RUNS"); do
  results+=("$(run nginx "$NGX" "$(nginx_worker)")")
  results+=("$(run legate "$LEG" "$LEGATE_PID")")
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin if line.strip()]
print("%-8s %12s %22s" % ("proxy", "median rps", "median CPU us/request"))
for name in sorted({r[0] for r in rows}):
    rps = [float(r[1]) for r in rows if r[0] == name]
    cpu = [float(r[2]) for r in rows if r[0] == name]
    print("%-8s %12.0f %22.2f" % (name, statistics.median(rps), statistics.median(cpu)))
'
