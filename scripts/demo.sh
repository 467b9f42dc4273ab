#!/usr/bin/env bash
# make demo: start a local docker-registry with a generated image, pull it into a fresh store with
# image-preheat, pull it again (nothing fetched: everything is stored), then list the store.
# Usage: scripts/demo.sh PATH/TO/image-preheat PATH/TO/preheat-fixture
set -euo pipefail
BIN=${1:?image-preheat binary}
FIXTURE=${2:?preheat-fixture binary}
SIZE=${DEMO_IMAGE_SIZE:-200MiB}
LAYERS=${DEMO_LAYERS:-4}

work=$(mktemp -d /tmp/image-preheat-demo.XXXXXX)
fixture_pid=
cleanup() {
  [ -n "$fixture_pid" ] && kill "$fixture_pid" 2>/dev/null && wait "$fixture_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting docker-registry on loopback and pushing a generated ${SIZE} image in ${LAYERS} layers"
mkfifo "$work/ready"
"$FIXTURE" --dir "$work/registry" --size "$SIZE" --layers "$LAYERS" --ready-file "$work/ready" &
fixture_pid=$!
read -r ref registry < "$work/ready"
echo "   image: $ref"

echo "== image-preheat pull (into $work/store)"
"$BIN" --log-format text pull "$ref" --store "$work/store" --insecure-registry "$registry"

echo "== image-preheat pull again (already stored: no registry traffic for blobs)"
"$BIN" --log-format text pull "$ref" --store "$work/store" --insecure-registry "$registry"

echo "== image-preheat images"
"$BIN" images --store "$work/store"
