# The Legate image: `legate` (and `legate-xds`, a link to it) on an empty base, run as uid 65532.
#
#   docker build -t legate .                    # build inside a Rust builder image (needs a registry)
#   podman build -t legate .                    # the same with podman/buildah
#   deploy/image/rootfs.sh target/release /tmp/legate-rootfs
#   podman build -f Dockerfile --target prebuilt -t legate /tmp/legate-rootfs
#                                               # from a binary built on the host, pulling nothing
#
# Both end in the same image: `base` below, plus the root filesystem deploy/image/rootfs.sh
# makes (in the builder stage, or on the host). docs/deploy.md explains the choice.

ARG RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
# The labels' version (the workspace's, checked by a test) and source revision: pass
# `--build-arg REVISION=$(git rev-parse --short=12 HEAD)`; the binary reports it too.
ARG VERSION=0.1.0
ARG REVISION=unknown

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The context has no .git (.dockerignore): the revision comes from the build argument.
ARG REVISION
RUN LEGATE_REVISION="${REVISION}" cargo build --release --locked -p legate \
 && deploy/image/rootfs.sh target/release /rootfs

# What the image is, whichever way its files come.
FROM scratch AS base
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

# `--target prebuilt`: the build context is a root filesystem made by deploy/image/rootfs.sh.
FROM base AS prebuilt
COPY . /

# The default: the root filesystem the builder stage made.
FROM base
COPY --from=build /rootfs/ /
