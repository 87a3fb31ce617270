# quiesce without Python: a PyInstaller build (bin/build-binary, the script CI runs) in a
# build stage, then a small non-root image holding only the binaries.
#
# Two uses:
# - Copy the release-command binary into your Rails image (one line, no Python, no apt):
#     COPY --from=ghcr.io/OWNER/quiesce:0.1.0 /opt/quiesce/release/quiesce /usr/local/bin/quiesce
#   or export it: docker build --target binary --output dist .
# - Run it as its own small Fly app: the exporter (default command) or `rejoin --wait`.
#
# The binaries need glibc >= the build stage's (Debian 12: 2.36, as in ruby:*-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${PYTHON_IMAGE} AS build
# PyInstaller needs binutils (objdump, strip) on Linux; versions come with the base image's
# Debian release, the Python packages are pinned with hashes (locks/*.txt).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
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

FROM ${RUNTIME_IMAGE}
# ca-certificates: rediss:// and the Fly API verify certificates against the system store.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin quiesce
COPY --from=build /out/full/quiesce /usr/local/bin/quiesce
COPY --from=build /out/release/quiesce /opt/quiesce/release/quiesce
USER 10001
ENTRYPOINT ["quiesce"]
CMD ["exporter"]
