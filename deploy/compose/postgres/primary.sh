#!/bin/sh
# The primary: made once (initdb) with trust authentication, as the whole stack uses (for a
# laptop only), accepting the replica's stream; then PostgreSQL itself.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb --username postgres --auth trust --pgdata "$PGDATA"
  echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
  echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
fi
exec postgres -c listen_addresses='*' -c wal_level=replica -c max_wal_senders=4
