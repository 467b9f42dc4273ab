#!/usr/bin/env bash
# Installs the Debian packages image-preheat's tests, demo and benchmarks use, when missing.
# Idempotent; needs root (CI and the development machines run as root).
set -euo pipefail

# command -> Debian package
declare -A PKGS=(
  [docker-registry]=docker-registry
  [protoc]=protobuf-compiler
  [htpasswd]=apache2-utils
  [openssl]=openssl
  [curl]=curl
  [skopeo]=skopeo
  [ip]=iproute2
  [ping]=iputils-ping
  [dnsmasq]=dnsmasq-base
  [containerd]=containerd
  [ctr]=containerd
  [dockerd]=docker.io
  [tc]=iproute2
)

missing=()
for cmd in "${!PKGS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKGS[$cmd]}")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: ok"
