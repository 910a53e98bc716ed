#!/bin/sh
# The streaming replica: copies the primary once (pg_basebackup, which also writes
# standby.signal and the primary's address), then runs as a hot standby.
set -eu
until pg_isready --quiet --host postgres-primary --username postgres; do
  echo "waiting for postgres-primary"
  sleep 1
done
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pg_basebackup --host postgres-primary --username postgres --pgdata "$PGDATA" \
    --write-recovery-conf --wal-method stream --checkpoint fast
fi
exec postgres -c listen_addresses='*' -c hot_standby=on
