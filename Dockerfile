# One image for every role: `storekeeper <role>`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p storekeeper && cp target/release/storekeeper /storekeeper

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/storekeeper --create-home storekeeper
COPY --from=build /storekeeper /usr/local/bin/storekeeper
USER storekeeper
WORKDIR /var/lib/storekeeper
ENV STOREKEEPER_LOG_FORMAT=json
ENTRYPOINT ["storekeeper"]
CMD ["--help"]
