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
  [promtool]=prometheus
  [jq]=jq
  [go]=golang-go
  [kubectl]=kubernetes-client
  [aria2c]=aria2
  [opentracker]=opentracker
)

missing=()
for cmd in "${!PKGS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKGS[$cmd]}")
done
# Go libraries scripts/check-deploy.sh builds its Helm template renderer from (GOPATH mode).
[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
[ -d /usr/share/gocode/src/sigs.k8s.io/yaml ] || missing+=(golang-k8s-sigs-yaml-dev)

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
# Kubernetes OpenAPI schemas for scripts/check-deploy.sh (PyPI; pulls in jsonschema and PyYAML).
if ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -qx 'Version: 1.37.0'; then
  echo "install-deps: pip installing kubernetes-validate==1.37.0"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore kubernetes-validate==1.37.0
fi
echo "install-deps: ok"
