# The Legate image: `legate` and `legate-xds` on an empty base, run as uid 65532.
#
#   docker build -t legate .                    # build inside a Rust builder image (needs a registry)
#   podman build -t legate .                    # the same with podman/buildah
#   deploy/image/rootfs.sh target/release /tmp/legate-rootfs
#   podman build -f Dockerfile --build-arg ROOTFS=prebuilt -t legate /tmp/legate-rootfs
#                                               # from binaries built on the host, pulling nothing
#
# Both ways end in the same final stage; docs/deploy.md explains the choice.

ARG RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
# Which stage provides /rootfs: `build` (compile here) or `prebuilt` (the build context is
# a root filesystem made by deploy/image/rootfs.sh).
ARG ROOTFS=build
# The labels' version (the workspace's, checked by a test) and source revision: pass
# `--build-arg REVISION=$(git rev-parse --short=12 HEAD)`; the binaries report it too.
ARG VERSION=0.1.0
ARG REVISION=unknown

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The context has no .git (.dockerignore): the revision comes from the build argument.
ARG REVISION
RUN LEGATE_REVISION="${REVISION}" cargo build --release --locked -p legate \
 && deploy/image/rootfs.sh target/release /rootfs

FROM scratch AS prebuilt
COPY . /rootfs/

FROM ${ROOTFS} AS rootfs
# One instruction: buildah 1.28 with `--layers=false` cannot copy from an empty stage.
LABEL org.opencontainers.image.title="legate-rootfs"

FROM scratch
COPY --from=rootfs /rootfs/ /
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="legate" \
      org.opencontainers.image.description="A sidecar service-mesh proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# 6533/6543: the example configs' plaintext and TLS listeners; 9902: the probe listener.
EXPOSE 6533 6543 9902
ENTRYPOINT ["legate", "run", "--config", "/etc/legate/legate.yaml"]
