#!/bin/sh
# Writes containerd hosts.toml files that point containerd at the node-local image-preheat mirror.
# Run by the DaemonSet's init container; containerd reads hosts.toml on every pull (no restart).
# Env: CONFIG_PATH    containerd's registry config_path as mounted in this container
#      MIRROR_URL     the mirror, e.g. http://127.0.0.1:5000
#      REGISTRIES     comma-separated: _default (every registry without its own file) or hosts
#      CAPABILITIES   comma-separated: pull, resolve
#      INSECURE_REGISTRIES  comma-separated hosts whose upstream server is plain HTTP
#      OVERWRITE      true: also replace files this script did not write
# A file lacking the marker line below belongs to someone else and is kept unless OVERWRITE=true.
set -eu
marker="# managed by image-preheat"
caps=""
for c in $(echo "${CAPABILITIES:-pull,resolve}" | tr ',' ' '); do
  case "$c" in
    pull | resolve) caps="${caps:+$caps, }\"$c\"" ;;
    *) echo "hosts-toml: unknown capability '$c'" >&2; exit 64 ;;
  esac
done
for reg in $(echo "${REGISTRIES:-_default}" | tr ',' ' '); do
  case "$reg" in
    */* | .* | *[!A-Za-z0-9._:-]*)
      echo "hosts-toml: invalid registry '$reg'" >&2
      exit 64
      ;;
  esac
  dir="$CONFIG_PATH/$reg"
  file="$dir/hosts.toml"
  if [ -f "$file" ] && ! grep -qxF "$marker" "$file" && [ "${OVERWRITE:-false}" != true ]; then
    echo "hosts-toml: keeping $file (not written by image-preheat)" >&2
    continue
  fi
  scheme=https
  case ",${INSECURE_REGISTRIES:-}," in *",$reg,"*) scheme=http ;; esac
  mkdir -p "$dir"
  tmp="$dir/.hosts.toml.$$"
  {
    echo "$marker"
    case "$reg" in
      _default) ;;
      docker.io) echo 'server = "https://registry-1.docker.io"' ;;
      *) echo "server = \"$scheme://$reg\"" ;;
    esac
    echo ""
    echo "[host.\"$MIRROR_URL\"]"
    echo "  capabilities = [$caps]"
  } >"$tmp"
  mv -f "$tmp" "$file"
  echo "hosts-toml: wrote $file" >&2
done
