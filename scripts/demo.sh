#!/usr/bin/env bash
# make demo: start a local docker-registry with a generated image (or use DEMO_IMAGE), run N
# image-preheat agents on loopback that know each other (--peer), hand them an image list, and print
# per node how long the image took and where its bytes came from (registry or peers), read from
# each agent's /api/v1/status.
# Usage: scripts/demo.sh PATH/TO/image-preheat PATH/TO/preheat-fixture
# Environment: DEMO_NODES (4), DEMO_IMAGE_SIZE (100MiB), DEMO_LAYERS (4), DEMO_IMAGE (an image to
# use instead of the generated one; its registry must be reachable), DEMO_LEASE (none),
# DOCKER_HOST / CONTAINERD_ADDRESS (import into that runtime; RUNTIME=auto then), DEMO_TIMEOUT (120s).
set -euo pipefail
BIN=${1:?image-preheat binary}
FIXTURE=${2:?preheat-fixture binary}
NODES=${DEMO_NODES:-4}
SIZE=${DEMO_IMAGE_SIZE:-100MiB}
LAYERS=${DEMO_LAYERS:-4}
TIMEOUT=${DEMO_TIMEOUT:-120}
RUNTIME=none
if [ -n "${DOCKER_HOST:-}" ] || [ -n "${CONTAINERD_ADDRESS:-}" ]; then RUNTIME=auto; fi

work=$(mktemp -d /tmp/image-preheat-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A loopback port nothing listens on right now.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

if [ -n "${DEMO_IMAGE:-}" ]; then
  ref=$DEMO_IMAGE
  insecure=${INSECURE_REGISTRIES:-}
  echo "== using image $ref"
else
  echo "== starting docker-registry on loopback with a generated ${SIZE} image in ${LAYERS} layers"
  mkfifo "$work/ready"
  "$FIXTURE" --dir "$work/registry" --size "$SIZE" --layers "$LAYERS" --ready-file "$work/ready" &
  pids+=($!)
  read -r ref insecure < "$work/ready"
  echo "   image: $ref"
fi

http=() swarm=()
for i in $(seq 0 $((NODES - 1))); do http+=("$(free_port)"); swarm+=("$(free_port)"); done
list="$work/images.list"
echo "# image-preheat demo" > "$list"
echo "== starting $NODES agents on loopback (RUNTIME=$RUNTIME, LEASE=${DEMO_LEASE:-none})"
for i in $(seq 0 $((NODES - 1))); do
  peers=()
  for j in $(seq 0 $((NODES - 1))); do [ "$j" != "$i" ] && peers+=("127.0.0.1:${swarm[$j]}"); done
  (IFS=,; exec env NODE_NAME="node-$i" STORE_DIR="$work/store-$i" IMAGE_LIST_PATH="$list" \
    MOUNT_DIR="$work/mount-$i" HTTP_ADDR="127.0.0.1:${http[$i]}" MIRROR_ADDR=127.0.0.1:0 SWARM_ADDR="127.0.0.1:${swarm[$i]}" \
    PEERS="${peers[*]}" INSECURE_REGISTRIES="$insecure" RUNTIME="$RUNTIME" LEASE="${DEMO_LEASE:-none}" \
    LOG_FORMAT=json LOG_LEVEL=warn "$BIN" agent 2> "$work/agent-$i.log") &
  pids+=($!)
done
for i in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:${http[$i]}/health" > /dev/null 2>&1 && break
    sleep 0.1
  done
done
# Let the agents find each other before the list arrives.
for i in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 1 100); do
    n=$(curl -fsS "http://127.0.0.1:${http[$i]}/api/v1/status" | jq '.peers | length')
    [ "$n" -ge $((NODES - 1)) ] && break
    sleep 0.1
  done
done

echo "== writing the image list (the agents watch its directory)"
start=$(date +%s.%N)
echo "$ref" > "$list.tmp" && mv "$list.tmp" "$list"
declare -A done_at=()
completed=0
deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$completed" -lt "$NODES" ]; do
  for i in $(seq 0 $((NODES - 1))); do
    [ -n "${done_at[$i]:-}" ] && continue
    state=$(curl -fsS "http://127.0.0.1:${http[$i]}/api/v1/status" | jq -r '.images[0].state // "absent"')
    if [ "$state" = complete ]; then done_at[$i]=$(date +%s.%N); completed=$((completed + 1)); fi
  done
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "error: not every node completed within ${TIMEOUT}s; logs in $work" >&2
    trap - EXIT; for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; exit 1
  fi
  sleep 0.2
done

echo
printf '%-8s %10s %14s %14s %14s\n' NODE SECONDS FROM_REGISTRY FROM_PEERS TOTAL
total_reg=0 total_peer=0
for i in $(seq 0 $((NODES - 1))); do
  row=$(curl -fsS "http://127.0.0.1:${http[$i]}/api/v1/status" | jq -r '.images[0] | "\(.registryBytes) \(.peerBytes) \(.totalBytes)"')
  read -r reg peer total <<< "$row"
  total_reg=$((total_reg + reg)); total_peer=$((total_peer + peer))
  secs=$(awk "BEGIN{print ${done_at[$i]} - $start}")
  printf '%-8s %10.1f %14s %14s %14s\n' "node-$i" "$secs" "$(numfmt --to=iec-i --suffix=B "$reg")" \
    "$(numfmt --to=iec-i --suffix=B "$peer")" "$(numfmt --to=iec-i --suffix=B "$total")"
done
echo
echo "registry served $(numfmt --to=iec-i --suffix=B "$total_reg") in all; peers served $(numfmt --to=iec-i --suffix=B "$total_peer")"
echo "== stopping the agents (SIGTERM)"
