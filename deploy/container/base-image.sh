#!/usr/bin/env bash
# Make the Dockerfile's base image locally, where no image registry can be reached: a minimal
# Debian bookworm from Debian's own packages (debootstrap), committed under the tag the
# Dockerfile names. Needs root, debootstrap and buildah.
set -euo pipefail
TAG="${1:-docker.io/library/debian:bookworm-slim}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if buildah inspect --type image "$TAG" >/dev/null 2>&1; then
  echo "$TAG exists"
  exit 0
fi
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
debootstrap --variant=minbase bookworm "$mnt" "$MIRROR" >/dev/null
# What a slim image leaves out: downloaded packages, package lists, docs.
rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/* \
       "$mnt"/usr/share/doc/* "$mnt"/usr/share/man/* "$mnt"/usr/share/locale/*
buildah umount "$ctr" >/dev/null
buildah config --cmd /bin/bash "$ctr"
buildah commit -q "$ctr" "$TAG" >/dev/null
echo "$TAG built"
