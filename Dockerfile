# syntax=docker/dockerfile:1.7
#
# Ember's images, from one Dockerfile:
#   docker build --target cpu  -t ember:0.1.0 .        # CPU backend (burn-flex), distroless
#   docker build --target cuda -t ember:0.1.0-cuda .   # burn-cuda on the NVIDIA CUDA runtime
# Both run `ember` as user 65532 with nothing writable but what the pod mounts (the weight cache
# at /var/cache/ember, /tmp): a read-only root filesystem works. The binary is built with the
# same command .ci/run uses (`cargo build --release --locked --bin ember`), so CI builds what
# ships, stripped of its debug info (26 MB instead of 220 MB). The shipped example models are at /opt/ember/models, the default repository
# (EMBER_MODEL_REPO overrides it, e.g. az://models).

ARG RUST_VERSION=1.95.0
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM rust:${RUST_VERSION}-bookworm AS source
# The commit `ember train` records in the manifests it writes (.git is not copied):
# docker build --build-arg EMBER_GIT_COMMIT=$(git rev-parse HEAD) ...
ARG EMBER_GIT_COMMIT=""
ENV EMBER_GIT_COMMIT=${EMBER_GIT_COMMIT}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY src src
# Every workspace member, and the test and bench targets Cargo.toml declares (cargo checks they
# exist before it builds anything).
COPY client client
COPY loadtest loadtest
COPY servicebus-double servicebus-double
COPY tests tests
COPY benches benches
COPY docs docs
COPY data data
COPY models models

FROM source AS build-cpu
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ember \
    && install -D -s -m 0755 target/release/ember /out/ember

FROM source AS build-cuda
# burn-cuda loads the CUDA driver and NVRTC at run time: building needs no CUDA toolkit
# (.cargo/config.toml pins the bindings to CUDA 12.8, the runtime image's). CI runs the same.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target-cuda \
    CARGO_TARGET_DIR=/src/target-cuda cargo build --release --locked --bin ember --features cuda \
    && install -D -s -m 0755 /src/target-cuda/release/ember /out/ember

# The GPU image: the CUDA runtime libraries (NVRTC, cuBLAS) from NVIDIA's image; the driver
# comes from the node (AKS GPU nodes, NVIDIA device plugin).
FROM ${CUDA_IMAGE} AS cuda
COPY --from=build-cuda /out/ember /usr/local/bin/ember
COPY --from=source /src/models /opt/ember/models
WORKDIR /opt/ember
ENV EMBER_CACHE_DIR=/var/cache/ember \
    EMBER_METRICS_ADDR=0.0.0.0:9464 \
    EMBER_LOG_FORMAT=json \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/ember"]
CMD ["serve", "--transport", "amqp"]

# The CPU image (the default target): glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS cpu
COPY --from=build-cpu /out/ember /usr/local/bin/ember
COPY --from=source /src/models /opt/ember/models
WORKDIR /opt/ember
ENV EMBER_CACHE_DIR=/var/cache/ember \
    EMBER_METRICS_ADDR=0.0.0.0:9464 \
    EMBER_LOG_FORMAT=json \
    HOME=/tmp
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/ember"]
CMD ["serve", "--transport", "amqp"]
