#!/usr/bin/env bash
# How long an operator change takes to reach 1,000 proxies through legate-xds (1 replica on a
# state file, and 3 replicas sharing etcd): see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# A thousand streams are two thousand sockets on this host.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v etcd >/dev/null || { echo "needs etcd (apt-get install etcd-server)" >&2; exit 1; }
cargo build --release -q -p legate-xds --bin legate-xds
cargo bench -q -p legate-xds --bench fanout -- "$@"
