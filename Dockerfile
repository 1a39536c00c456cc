# scopegate container image: a builder stage with the Rust toolchain, a small Debian runtime.
#
#   docker build -t scopegate .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/my-config:/etc/scopegate:ro" scopegate
#
# To package a binary built beforehand instead of building in the image (as the tests do):
#   buildah build --build-arg PREBUILT=target/release/scopegate -t scopegate .

ARG BUILDER_IMAGE=docker.io/library/rust:1-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
# A path in the build context to a scopegate binary already built for this Debian release;
# empty: build it here.
ARG PREBUILT=""
WORKDIR /src
COPY . .
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && if [ -n "$PREBUILT" ]; then \
        install -D -m 0755 "$PREBUILT" /out/scopegate; \
    else \
        apt-get install -y --no-install-recommends cmake g++ make \
        && cargo build --release --locked --bin scopegate \
        && install -D -m 0755 target/release/scopegate /out/scopegate; \
    fi

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="Edge reverse proxy that enforces OAuth 2.0 scopes from JWT access tokens per route" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="README.md"
COPY --from=builder /out/scopegate /usr/local/bin/scopegate
# CA certificates (JWKS and discovery are fetched over HTTPS): the bundle alone, without the
# tools that make it.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# A config that starts as is (listening on every address, the development key's JWKS);
# mount yours over /etc/scopegate.
COPY deploy/container/scopegate.toml deploy/container/jwks.json /etc/scopegate/
ENV SCOPEGATE_CONFIG=/etc/scopegate/scopegate.toml
# No root, no passwd entry needed (the "nonroot" uid of distroless images).
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/scopegate"]
CMD ["run"]
