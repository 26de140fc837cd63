#!/usr/bin/env bash
# The base image the Dockerfiles build FROM (`ARG PYTHON_IMAGE`, python:3.11-slim pinned by
# digest), made available to the container engine. Prints the reference to build with:
#
#   base="$(scripts/container-base.sh)"
#   podman build --format docker --network host --pull=never \
#     --build-arg PYTHON_IMAGE="$base" -t housing-mlops:local .
#
# 1. Where the registry can be reached, the pinned official image is pulled and used unchanged.
# 2. Where it cannot (these machines reach only PyPI and Debian's archive), a stand-in is built
#    from Debian's own packages: `debootstrap --variant=minbase bookworm`, imported as an image.
#    It is reused while this script is unchanged (the label below holds the script's sha256),
#    so only the first run on a machine pays for debootstrap (minutes); rerun with
#    HOUSING_BASE_REBUILD=1 to make it again.
#
# How the stand-in differs from the official python:3.11-slim:
#   - Python is Debian's CPython 3.11 package (/usr/bin/python3, with python-is-python3 for
#     `python`), not the python.org build in /usr/local; pip, venv and setuptools are Debian's.
#   - pip's EXTERNALLY-MANAGED marker (PEP 668) is removed, as the official image has none, so
#     `pip install` into the system interpreter works as in the Dockerfile.
#   - The host's extra CA certificates (/usr/local/share/ca-certificates) are trusted, so pip
#     and apt inside a build reach the package index through this network's TLS proxy.
#   - No security-suite updates beyond what the mirror serves; no docs, man pages or apt lists.
#
# Environment: CONTAINER_ENGINE (podman, or docker), DEBIAN_MIRROR (http://deb.debian.org/debian),
# HOUSING_BASE_STANDIN (the stand-in's tag), HOUSING_BASE_NO_PULL=1 (skip the registry).
# Building the stand-in needs root and debootstrap (Debian: apt-get install debootstrap).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
engine="${CONTAINER_ENGINE:-podman}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
standin="${HOUSING_BASE_STANDIN:-localhost/housing-python-standin:3.11-slim}"
label="org.housing-mlops.standin.script-sha256"
script_sha="$(sha256sum "$here/$(basename "$0")" | cut -d' ' -f1)"
pinned="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$repo/Dockerfile" | head -n1)"

say() { printf 'container-base: %s\n' "$*" >&2; }

if [ -z "$pinned" ]; then
  say "no 'ARG PYTHON_IMAGE=' line in $repo/Dockerfile"
  exit 3
fi

# 1. The official image: already here, or pulled now.
if "$engine" image inspect "$pinned" >/dev/null 2>&1; then
  say "using the official image $pinned (already present)"
  echo "$pinned"
  exit 0
fi
if [ "${HOUSING_BASE_NO_PULL:-0}" != 1 ] \
  && timeout 600 "$engine" pull -q "$pinned" >/dev/null 2>"${TMPDIR:-/tmp}/container-base-pull.$$"; then
  rm -f "${TMPDIR:-/tmp}/container-base-pull.$$"
  say "pulled the official image $pinned"
  echo "$pinned"
  exit 0
fi
if [ -s "${TMPDIR:-/tmp}/container-base-pull.$$" ]; then
  say "cannot pull $pinned: $(tail -n1 "${TMPDIR:-/tmp}/container-base-pull.$$")"
fi
rm -f "${TMPDIR:-/tmp}/container-base-pull.$$"

# 2. The stand-in: reuse it while it was made by this very script.
have="$("$engine" image inspect --format "{{ index .Config.Labels \"$label\" }}" "$standin" \
  2>/dev/null || true)"
if [ "$have" = "$script_sha" ] && [ "${HOUSING_BASE_REBUILD:-0}" != 1 ]; then
  say "reusing the stand-in $standin (made by this script, sha256 ${script_sha:0:12})"
  echo "$standin"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  say "debootstrap not found: apt-get install debootstrap (or make $pinned pullable)"
  exit 3
fi
if [ "$(id -u)" != 0 ]; then
  say "building the stand-in needs root (debootstrap and chroot)"
  exit 3
fi

say "building the stand-in $standin from $mirror (debootstrap: a few minutes, once per machine)"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/housing-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$SECONDS

debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }

rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
fi
# What python:3.11-slim leaves out as well: apt's lists and cache, docs and man pages.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

tar -C "$rootfs" --numeric-owner -cf - . | "$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL $label=$script_sha" \
  --change "LABEL org.housing-mlops.standin.for=$pinned" \
  - "$standin" >/dev/null
say "built $standin in $((SECONDS - started)) s"
echo "$standin"
