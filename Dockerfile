# binderd's image, for deploy/kubernetes. Needs a registry for its base
# images, so it is not built on the development machine (which has none).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin binderd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/binderd /usr/local/bin/binderd
USER 65532:65532
EXPOSE 8585
ENTRYPOINT ["/usr/local/bin/binderd"]
CMD ["serve", "--listen", "0.0.0.0:8585", "--data-dir", "/var/lib/binderd"]
