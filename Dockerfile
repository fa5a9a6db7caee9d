# Builds the single `fleet` binary; the same image runs every role.
# What the build stage copies is what `cargo build --release --locked` reads (the manifest
# names the bench, `fleet dev` embeds a fixture): tests/it/deploy.rs builds from exactly
# these files in a scratch directory.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY jobs ./jobs
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY tests/fixtures ./tests/fixtures
RUN cargo build --release --locked --bin fleet

# ca-certificates: the system's roots, which Fleet's TLS clients (rustls with the native
# roots, for rediss:// and sslmode=verify-full) trust unless told another CA.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 fleet
COPY --from=build /src/target/release/fleet /usr/local/bin/fleet
USER fleet
ENV FLEET_LISTEN=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["fleet"]
CMD ["intake"]
