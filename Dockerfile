# Multi-stage build of the mailintake binary; the runtime image has only the binary, CA certificates
# and OpenSSL, and runs as an unprivileged user.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# sqlx-core with TCP_NODELAY restored (vendor/README.md), wired in by [patch.crates-io].
COPY vendor ./vendor
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
RUN cargo build --release --locked --bin mailintake

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/mailintake --create-home mailintake
COPY --from=build /src/target/release/mailintake /usr/local/bin/mailintake
USER mailintake
WORKDIR /var/lib/mailintake
# /etc/mailintake holds mailintake.toml (mount read-only); /var/lib/mailintake holds the SQLite
# database when database.url = "sqlite:///var/lib/mailintake/mailintake.db".
VOLUME ["/var/lib/mailintake"]
ENV MAILINTAKE_CONFIG=/etc/mailintake/mailintake.toml
ENTRYPOINT ["/usr/local/bin/mailintake"]
CMD ["run"]
