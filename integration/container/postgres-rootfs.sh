#!/bin/sh
# A stand-in for a PostgreSQL image, for tests on machines that cannot pull one: the host's
# PostgreSQL server programs, /bin/sh and sleep, the libraries they load, and a `postgres`
# user, as a root filesystem with a Containerfile beside it.
#
#   integration/container/postgres-rootfs.sh OUT_DIR
#
# `podman build OUT_DIR` then builds an image that compose.yaml's PostgreSQL scripts run on,
# as they run on docker.io/library/postgres.
set -eu
out=$1
if [ -e "$out" ]; then
  echo "$0: $out already exists" >&2
  exit 1
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  echo "$0: no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)" >&2
  exit 1
fi
pg=$(dirname "$bin")
share=/usr/share/postgresql/$(basename "$pg")

copy() {
  mkdir -p "$out$(dirname "$1")"
  cp -L "$1" "$out$1"
}
elf_files="$bin/postgres $bin/initdb $bin/pg_isready $bin/pg_basebackup /bin/sh /bin/sleep"
for f in $elf_files; do copy "$f"; done
# Every module but the JIT (which would bring LLVM, most of the size).
modules=$(ls "$pg"/lib/*.so | grep -v llvmjit)
for f in $modules; do copy "$f"; done
for f in $elf_files $modules; do
  ldd "$f" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }'
done | sort -u | while read -r lib; do copy "$lib"; done
mkdir -p "$out/usr/share/postgresql"
cp -a "$share" "$out$share"
copy /usr/share/zoneinfo/UTC
mkdir -p "$out/etc" "$out/var/lib/postgresql/data" "$out/var/run/postgresql" "$out/tmp"
chmod 0777 "$out/var/lib/postgresql/data"
chmod 1777 "$out/var/run/postgresql" "$out/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n' > "$out/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' > "$out/etc/group"
cat > "$out/Containerfile" <<CONTAINERFILE
FROM scratch
COPY . /
ENV PATH=$bin:/bin PGDATA=/var/lib/postgresql/data TZ=UTC
USER postgres
CONTAINERFILE
