#!/bin/sh
# Assembles the image's root filesystem from the built `legate` binary (stripped; `legate-xds`
# is a link to it), the shared libraries it loads, the CA bundle for upstream TLS, and the
# unprivileged user.
#
#   deploy/image/rootfs.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds `legate` (target/release, or target/debug for a quick test image); OUT_DIR
# is created and must not exist. The image's Dockerfile runs this in its builder stage;
# `podman build --target prebuilt OUT_DIR` builds from a rootfs made on the host (see
# docs/deploy.md).
set -eu

if [ $# -ne 2 ]; then
  echo "usage: $0 BIN_DIR OUT_DIR" >&2
  exit 64
fi
bin_dir=$1
out=$2
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if [ -e "$out" ]; then
  echo "$0: $out already exists" >&2
  exit 1
fi
if [ ! -x "$bin_dir/legate" ]; then
  echo "$0: $bin_dir/legate is missing: build it first (cargo build --release -p legate)" >&2
  exit 1
fi
if [ ! -s "$ca_bundle" ]; then
  echo "$0: no CA bundle at $ca_bundle (install ca-certificates, or set CA_BUNDLE)" >&2
  exit 1
fi

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/etc/legate" "$out/tmp"
chmod 1777 "$out/tmp"
# Symbols stay in the build tree (profilers need them); the image carries code only.
strip --strip-unneeded -o "$out/usr/local/bin/legate" "$bin_dir/legate"
# `legate` started as `legate-xds` is the control plane: one copy of the code both share.
ln -s legate "$out/usr/local/bin/legate-xds"
# Every library the dynamic loader maps, at the path it is looked up by, the loader included.
ldd "$bin_dir/legate" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
cp -L "$ca_bundle" "$out/etc/ssl/certs/ca-certificates.crt"
# A named user and group for the uid and gid the image runs as (65532, as distroless does).
echo 'legate:x:65532:65532:legate:/nonexistent:/sbin/nologin' > "$out/etc/passwd"
echo 'legate:x:65532:' > "$out/etc/group"
