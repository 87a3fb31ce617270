# quiesce without Python: a PyInstaller build (bin/build-binary, the script CI runs) in a
# build stage, then a small non-root image holding only the binaries.
#
# Two uses:
# - Copy the release-command binary into your Rails image (one line, no Python, no apt):
#     COPY --from=ghcr.io/OWNER/quiesce:0.1.0 /opt/quiesce/release/quiesce /usr/local/bin/quiesce
#   or export it: docker build --target binary --output dist .
#   (--target binaries exports both: quiesce, the release build, and quiesce-full)
# - Run it as its own small Fly app: the exporter (default command) or `rejoin --wait`.
#
# The binaries need glibc >= the build stage's (Debian 12: 2.36, as in ruby:*-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${PYTHON_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# PyInstaller needs binutils (objdump, strip) on Linux; versions come with the base image's
# Debian release, the Python packages are pinned with hashes (locks/*.txt).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY bin/build-binary bin/
COPY locks/ locks/
COPY quiesce/ quiesce/
ARG SOURCE_DATE_EPOCH=0
# release: what `quiesce quiet` imports (what a Rails image copies); full: every dependency
# (the exporter, rejoin and recover need httpx and prometheus-client).
RUN bin/build-binary --profile release --out /out/release \
    && bin/build-binary --profile full --out /out/full

# docker build --target binary --output dist .  ->  dist/quiesce, the release binary
FROM scratch AS binary
COPY --from=build /out/release/quiesce /quiesce

# docker build --target binaries --output dist .  ->  dist/quiesce and dist/quiesce-full
# (what examples/github-actions/release.yml publishes)
FROM scratch AS binaries
COPY --from=build /out/release/quiesce /quiesce
COPY --from=build /out/full/quiesce /quiesce-full

FROM ${RUNTIME_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# ca-certificates: rediss:// and the Fly API verify certificates against the system store.
# apt-get clean: not every base image has Docker's apt clean-up config (without it the
# downloaded .debs stay in the layer). A real group 10001, so the container runs 10001:10001.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 quiesce \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin quiesce
COPY --from=build /out/full/quiesce /usr/local/bin/quiesce
COPY --from=build /out/release/quiesce /opt/quiesce/release/quiesce
# bin/build-image and examples/github-actions/release.yml set these.
ARG IMAGE_SOURCE=""
ARG IMAGE_VERSION=""
ARG IMAGE_REVISION=""
LABEL org.opencontainers.image.title="quiesce" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.version="${IMAGE_VERSION}" \
      org.opencontainers.image.revision="${IMAGE_REVISION}"
USER 10001:10001
# The exporter (default command): /metrics and /healthz.
EXPOSE 10437
ENTRYPOINT ["quiesce"]
CMD ["exporter"]
