#!/usr/bin/env bash
# Offline checks of deploy/ (Helm chart, kustomize base, monitoring, hosts.toml writer); part of `make test`.
# What is and is not checked: deploy/README.md, "What is checked".
#   scripts/check-deploy.sh            check
#   scripts/check-deploy.sh --update   regenerate deploy/kustomize/agent.yaml and monitoring/monitoring.yaml
# Env: IMAGE_PREHEAT_BIN  the agent binary to ask for its env names (default: cargo build it)
#      KUBE_VERSIONS      Kubernetes versions to validate against, space-separated (default: the
#                         chart's minimum kubeVersion and kubernetes-validate's newest)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-/var/tmp/image-preheat-target}
mkdir -p "$target/deploy-tools"

# helmrender: Helm's template engine rebuilt from Debian's Go sprig package (no helm binary here).
export GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$target/deploy-tools/go-cache" GOFLAGS=
go test ./deploy/tools/helmrender
go build -o "$target/deploy-tools/helmrender" ./deploy/tools/helmrender

bin=${IMAGE_PREHEAT_BIN:-}
if [ -z "$bin" ]; then
  ${CARGO:-cargo} build -q -p image-preheat --bin image-preheat
  bin="$target/debug/image-preheat"
fi

args=(--renderer "$target/deploy-tools/helmrender" --agent-bin "$bin")
for v in ${KUBE_VERSIONS:-}; do args+=(--kube-version "$v"); done
exec python3 deploy/tools/check_manifests.py "${args[@]}" "$@"
