# Release binaries of device-refresh: refresh-api, refresh-worker, refreshctl, push-gateway-sim.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
# ca-certificates: TLS to real gateways and brokers; curl: the compose healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/refresh-api /src/target/release/refresh-worker \
     /src/target/release/refreshctl /src/target/release/push-gateway-sim /usr/local/bin/
USER 65532:65532
CMD ["refresh-api"]
