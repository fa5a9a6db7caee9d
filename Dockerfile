# Builds the single `fleet` binary; the same image runs every role.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY jobs ./jobs
COPY src ./src
COPY migrations ./migrations
COPY tests/fixtures ./tests/fixtures
RUN cargo build --release --locked --bin fleet

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 fleet
COPY --from=build /src/target/release/fleet /usr/local/bin/fleet
USER fleet
ENV FLEET_LISTEN=0.0.0.0:8080 FLEET_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["fleet"]
CMD ["intake"]
