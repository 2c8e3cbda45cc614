# syntax=docker/dockerfile:1
# Keystone's image: dependencies built in a layer of their own (cargo-chef), a release build
# stripped of its debug information, and a distroless runtime without a shell, as a non-root
# user. CI builds the binary the same way (`cargo build --release --locked --bin keystone`,
# x86_64-unknown-linux-gnu) and checks that it starts; see .ci/run.
#
#   docker build -t keystone .
#   docker run --read-only -p 50051:50051 -p 8080:8080 \
#     -e KEYSTONE_DATABASE_URL=postgres://… -e KEYSTONE_SECRETS__PEPPER=… keystone
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.76
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: rebuilt only when Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin keystone \
    && strip --strip-debug target/release/keystone \
    && install -D -m 0555 target/release/keystone /out/keystone \
    && install -d -m 0755 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="keystone" \
      org.opencontainers.image.description="Keystone: the identity and token service other services trust (gRPC, JWT, OAuth2)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/keystone/keystone"
COPY --from=builder /out/keystone /usr/local/bin/keystone
# The embedded default keeps its SQLite file and pepper here: mount a volume (the root
# filesystem may be read-only). Production sets KEYSTONE_DATABASE_URL to PostgreSQL.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/keystone
WORKDIR /var/lib/keystone
VOLUME ["/var/lib/keystone"]
ENV KEYSTONE_GRPC_ADDR=0.0.0.0:50051 \
    KEYSTONE_HTTP_ADDR=0.0.0.0:8080
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/keystone"]
CMD ["serve"]
