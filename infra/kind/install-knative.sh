#!/usr/bin/env bash
# Installs Knative Serving + Kourier into the current kubectl context (a kind
# cluster made from infra/kind/cluster.yaml) and sets up sslip.io magic DNS on
# 127.0.0.1, the way Knative's kind quickstart does.
#
# Downloads the release manifests from GitHub, so it needs internet access.
# Versions are pinned; override with KNATIVE_VERSION / KOURIER_VERSION, e.g.
#   KNATIVE_VERSION=knative-v1.21.1 KOURIER_VERSION=knative-v1.21.0 infra/kind/install-knative.sh
# (net-kourier's patch releases do not always match serving's: check both pages.)
set -euo pipefail

KNATIVE_VERSION="${KNATIVE_VERSION:-knative-v1.20.0}"
KOURIER_VERSION="${KOURIER_VERSION:-${KNATIVE_VERSION}}"
DOMAIN="${KNATIVE_DOMAIN:-127.0.0.1.sslip.io}"
SERVING_URL="https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}"
KOURIER_URL="https://github.com/knative-extensions/net-kourier/releases/download/${KOURIER_VERSION}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'install-knative: %s\n' "$*" >&2; exit 1; }

command -v kubectl >/dev/null 2>&1 || die "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)"
kubectl version >/dev/null 2>&1 || die "kubectl cannot reach a cluster: run 'just cluster-up' (or kind create cluster --config infra/kind/cluster.yaml) first"

# Knative supports only recent Kubernetes minors; warn early rather than fail late.
server_minor="$(kubectl version -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | tail -1)"
if [[ -n "${server_minor}" && "${server_minor}" -lt 32 ]]; then
  echo "warning: cluster is Kubernetes 1.${server_minor}; Knative ${KNATIVE_VERSION} expects a recent one (>= 1.32). Use kind >= v0.27." >&2
fi

# kubectl apply -f URL, retried: GitHub release downloads occasionally fail.
apply_url() {
  local url="$1" i
  for i in 1 2 3; do
    if kubectl apply -f "${url}"; then return 0; fi
    echo "retrying in 10s (${i}/3): ${url}" >&2
    sleep 10
  done
  die "could not apply ${url}"
}

say "Knative Serving ${KNATIVE_VERSION}: CRDs"
apply_url "${SERVING_URL}/serving-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s --all crd

say "Knative Serving ${KNATIVE_VERSION}: core"
apply_url "${SERVING_URL}/serving-core.yaml"
kubectl -n knative-serving wait deployment --all --for=condition=Available --timeout=600s

say "Kourier ${KOURIER_VERSION}"
apply_url "${KOURIER_URL}/kourier.yaml"
kubectl -n kourier-system wait deployment --all --for=condition=Available --timeout=600s
kubectl patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
kubectl apply -f "${HERE}/kourier-nodeport.yaml"

say "DNS: *.${DOMAIN} (sslip.io resolves <anything>.127.0.0.1.sslip.io to 127.0.0.1)"
kubectl patch configmap/config-domain -n knative-serving --type merge \
  -p "{\"data\":{\"${DOMAIN}\":\"\"}}"

# dev.local/... images are loaded into the node by `kind load`, never pulled:
# Knative must not try to resolve their tags to digests against a registry.
# dev.local is in Knative's default skip list; make sure it stays there.
skip="$(kubectl -n knative-serving get configmap config-deployment \
  -o jsonpath='{.data.registries-skipping-tag-resolving}' 2>/dev/null || true)"
if [[ ",${skip}," != *",dev.local,"* ]]; then
  kubectl patch configmap/config-deployment -n knative-serving --type merge \
    -p "{\"data\":{\"registries-skipping-tag-resolving\":\"${skip:+${skip},}kind.local,ko.local,dev.local\"}}"
fi

kubectl -n knative-serving wait deployment --all --for=condition=Available --timeout=300s
say "Knative Serving ready. Services will be at http://<name>.<namespace>.${DOMAIN}"
