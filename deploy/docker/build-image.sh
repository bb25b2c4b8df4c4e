#!/usr/bin/env bash
# Builds the release binary and the `rlhf:dev` image from nothing (no base image can be pulled
# here): the binary, the shared libraries `ldd` lists for it, and tini as PID 1, in a FROM
# scratch image.
#
#   deploy/docker/build-image.sh [TAG]        # default tag: rlhf:dev
#   RLHF_BINARY=PATH build-image.sh [TAG]     # an rlhf binary built already (no cargo run)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-rlhf:dev}"
if [ -n "${RLHF_BINARY:-}" ]; then
    binary="$RLHF_BINARY"
    [ -x "$binary" ] || { echo "build-image.sh: RLHF_BINARY=$binary is not an executable" >&2; exit 1; }
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rlhf-target}"
    cargo build --release --locked
    binary="$CARGO_TARGET_DIR/release/rlhf"
fi
tini="$(command -v tini-static || command -v tini || true)"
if [ -z "$tini" ]; then
    echo "build-image.sh: needs tini (apt-get install tini) to run as the containers' PID 1" >&2
    exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/run/rlhf"
# Without the debug info the release profile keeps for profiling (~5x smaller).
strip --strip-debug -o "$root/usr/local/bin/rlhf" "$binary" 2>/dev/null || cp "$binary" "$root/usr/local/bin/rlhf"
cp "$tini" "$root/usr/local/bin/tini"
# Every shared library the two executables load, with the dynamic loader, at the same paths.
# (A static tini has none: `ldd` says so and fails, which is fine.)
for executable in "$binary" "$tini"; do
    { ldd "$executable" 2>/dev/null || true; } | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }'
done | sort -u | while read -r library; do
    cp -L --parents "$library" "$root/"
done
cp deploy/docker/Dockerfile "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "$tag"
