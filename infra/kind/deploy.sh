#!/usr/bin/env bash
# The flash-sale stack on a local kind cluster with Knative Serving.
# Called by the recipes in infra/deploy.just; usable alone:
#
#   infra/kind/deploy.sh cluster-up     kind cluster + Knative Serving + Kourier
#   infra/kind/deploy.sh secrets        create knative/secrets.env + public.env if missing
#   infra/kind/deploy.sh deploy         kubectl apply -k knative/, wait until ready
#   infra/kind/deploy.sh deploy-kn      the same, the Knative Services made with `kn`
#   infra/kind/deploy.sh status         what is running
#   infra/kind/deploy.sh cluster-down   delete the kind cluster
#
# Environment: FLASHSALE_VERSION (0.1.0), FLASHSALE_CLUSTER (flashsale),
# FLASHSALE_KUBE_CONTEXT (kind-<cluster>): every kubectl/kn call names this
# context, so nothing lands on whatever cluster happens to be current.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

VERSION="${FLASHSALE_VERSION:-0.1.0}"
CLUSTER="${FLASHSALE_CLUSTER:-flashsale}"
CONTEXT="${FLASHSALE_KUBE_CONTEXT:-kind-${CLUSTER}}"
NS=flashsale
DOMAIN="${KNATIVE_DOMAIN:-127.0.0.1.sslip.io}"
SECRETS_ENV=knative/secrets.env
PUBLIC_ENV=knative/public.env

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
need() { have "$1" || die "$1 not found: $2"; }
k() { kubectl --context "${CONTEXT}" "$@"; }

KIND_URL="https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
KUBECTL_URL="https://kubernetes.io/docs/tasks/tools/"

# kind talks to docker, or to podman when docker's daemon is not there.
kind_provider() {
  if [[ -z "${KIND_EXPERIMENTAL_PROVIDER:-}" ]] && ! { have docker && docker info >/dev/null 2>&1; } && have podman; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
}

require_knative() {
  k version >/dev/null 2>&1 \
    || die "cannot reach cluster context ${CONTEXT}: run 'just cluster-up' (or set FLASHSALE_KUBE_CONTEXT)"
  k get crd services.serving.knative.dev >/dev/null 2>&1 \
    || die "Knative Serving is not installed in ${CONTEXT}: run 'just cluster-up' (or infra/kind/install-knative.sh)"
}

cmd_cluster_up() {
  need kind "install kind (${KIND_URL})"
  need kubectl "install kubectl (${KUBECTL_URL})"
  kind_provider
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    say "kind cluster ${CLUSTER} exists"
  else
    say "kind create cluster --name ${CLUSTER} --config infra/kind/cluster.yaml"
    kind create cluster --name "${CLUSTER}" --config infra/kind/cluster.yaml --wait 120s
  fi
  kubectl config use-context "${CONTEXT}" >/dev/null
  infra/kind/install-knative.sh
  say "cluster ready: next 'just images kind-load deploy'"
}

cmd_cluster_down() {
  need kind "install kind (${KIND_URL})"
  kind_provider
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    kind delete cluster --name "${CLUSTER}"
  else
    echo "no kind cluster named ${CLUSTER}"
  fi
}

b64url() { base64 | tr '+/' '-_' | tr -d '=\n'; }

# Prints TOKEN_SIGNING_KEY=... and TOKEN_PUBLIC_KEY=... lines.
keypair() {
  local out
  if have cargo && out="$(cargo run -q -p auth -- keygen 2>/dev/null)" \
     && grep -q '^TOKEN_SIGNING_KEY=' <<<"${out}" && grep -q '^TOKEN_PUBLIC_KEY=' <<<"${out}"; then
    echo "key pair from: cargo run -q -p auth -- keygen" >&2
    grep -E '^TOKEN_(SIGNING|PUBLIC)_KEY=' <<<"${out}"
    return
  fi
  # Fallback: the same encoding with openssl (raw 32-byte seed / public key,
  # base64url without padding; they are the last 32 bytes of the DER forms).
  have openssl || die "need either 'cargo run -p auth -- keygen' to work or openssl to make an Ed25519 key pair"
  echo "auth keygen unavailable; key pair from openssl (Ed25519)" >&2
  local pem
  pem="$(mktemp)"
  openssl genpkey -algorithm ed25519 -out "${pem}" 2>/dev/null || { rm -f "${pem}"; die "openssl cannot make Ed25519 keys (needs OpenSSL >= 1.1.1)"; }
  printf 'TOKEN_SIGNING_KEY=%s\n' "$(openssl pkey -in "${pem}" -outform DER | tail -c 32 | b64url)"
  printf 'TOKEN_PUBLIC_KEY=%s\n' "$(openssl pkey -in "${pem}" -pubout -outform DER | tail -c 32 | b64url)"
  rm -f "${pem}"
}

cmd_secrets() {
  if [[ -f "${SECRETS_ENV}" && -f "${PUBLIC_ENV}" ]]; then
    echo "using existing ${SECRETS_ENV} and ${PUBLIC_ENV}"
    return
  fi
  if [[ -f "${SECRETS_ENV}" || -f "${PUBLIC_ENV}" ]]; then
    die "only one of ${SECRETS_ENV} / ${PUBLIC_ENV} exists; they hold one key pair: delete both to regenerate"
  fi
  say "generating ${SECRETS_ENV} and ${PUBLIC_ENV} (gitignored)"
  local pair sign pub admin
  pair="$(keypair)"
  sign="$(sed -n 's/^TOKEN_SIGNING_KEY=//p' <<<"${pair}")"
  pub="$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' <<<"${pair}")"
  [[ -n "${sign}" && -n "${pub}" ]] || die "key generation produced no key pair"
  # A second pair for waiting-room admission tokens: stock signs, order verifies.
  local apair asign apub
  apair="$(keypair)"
  asign="$(sed -n 's/^TOKEN_SIGNING_KEY=//p' <<<"${apair}")"
  apub="$(sed -n 's/^TOKEN_PUBLIC_KEY=//p' <<<"${apair}")"
  [[ -n "${asign}" && -n "${apub}" ]] || die "key generation produced no admission key pair"
  if have openssl; then
    admin="$(openssl rand -hex 24)"
  else
    admin="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  fi
  (
    umask 077
    {
      echo "# generated by infra/kind/deploy.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); never commit"
      echo "TOKEN_SIGNING_KEY=${sign}"
      echo "ADMISSION_SIGNING_KEY=${asign}"
      echo "ADMIN_TOKEN=${admin}"
      echo "AWS_ACCESS_KEY_ID=dynamodb-local"
      echo "AWS_SECRET_ACCESS_KEY=dynamodb-local"
    } > "${SECRETS_ENV}"
    {
      echo "# generated by infra/kind/deploy.sh with ${SECRETS_ENV}: the matching public key"
      echo "TOKEN_PUBLIC_KEY=${pub}"
      echo "ADMISSION_PUBLIC_KEY=${apub}"
    } > "${PUBLIC_ENV}"
  )
  echo "ADMIN_TOKEN (for POST /stock/sales) is in ${SECRETS_ENV}"
}

# Backends up, tables created.
wait_backends() {
  say "waiting for redis and dynamodb"
  k -n "${NS}" rollout status deployment/redis --timeout=300s
  k -n "${NS}" rollout status deployment/dynamodb --timeout=300s
  say "waiting for the table migration (job/flashsale-migrate)"
  if ! k -n "${NS}" wait --for=condition=complete job/flashsale-migrate --timeout=600s; then
    k -n "${NS}" get pods -l app.kubernetes.io/component=migrate || true
    k -n "${NS}" logs job/flashsale-migrate --all-containers --tail=50 || true
    die "table migration did not complete (ErrImagePull/ImagePullBackOff above means: run 'just images kind-load')"
  fi
}

wait_ksvcs() {
  say "waiting for the Knative Services to become Ready"
  if ! k -n "${NS}" wait ksvc --all --for=condition=Ready --timeout=600s; then
    k -n "${NS}" get ksvc || true
    k -n "${NS}" get pods -l app.kubernetes.io/component=function || true
    die "Knative Services not Ready: 'kubectl --context ${CONTEXT} -n ${NS} describe ksvc' and the pod logs say why"
  fi
}

# A Job's pod template is immutable: remove the previous run so a new image
# version is applied cleanly (migrate is idempotent, re-running is harmless).
reset_migrate_job() {
  k -n "${NS}" delete job flashsale-migrate --ignore-not-found --wait=true >/dev/null 2>&1 || true
}

print_urls() {
  say "Knative Services"
  k -n "${NS}" get ksvc
  cat <<EOF

Call them through Kourier on 127.0.0.1:80 (infra/kind/cluster.yaml):
  curl http://auth.${NS}.${DOMAIN}/auth/jwks.json
  # without DNS for sslip.io, set the Host header instead:
  curl -H 'Host: auth.${NS}.${DOMAIN}' http://127.0.0.1/auth/jwks.json
Admin token for POST /stock/sales:  grep ADMIN_TOKEN ${SECRETS_ENV}
EOF
}

cmd_deploy() {
  need kubectl "install kubectl (${KUBECTL_URL})"
  require_knative
  cmd_secrets
  reset_migrate_job
  say "kubectl apply -k knative/"
  k apply -k knative/
  wait_backends
  wait_ksvcs
  print_urls
}

# One `kn service create|update` per function, flags equivalent to knative/<fn>.yaml.
kn_apply() {
  local fn="$1"; shift
  local common=(
    --namespace "${NS}"
    --image "dev.local/flashsale/${fn}:${VERSION}"
    --pull-policy IfNotPresent
    --port http1:8080
    --env-from cm:flashsale-config
    --env-value-from AWS_ACCESS_KEY_ID=secret:flashsale-secrets:AWS_ACCESS_KEY_ID
    --env-value-from AWS_SECRET_ACCESS_KEY=secret:flashsale-secrets:AWS_SECRET_ACCESS_KEY
    --probe-readiness http::8080:/healthz
    --scale-min 0
    --label app.kubernetes.io/part-of=flashsale
    --label app.kubernetes.io/component=function
    --wait-timeout 600
  )
  if kn --context "${CONTEXT}" service describe "${fn}" --namespace "${NS}" >/dev/null 2>&1; then
    kn --context "${CONTEXT}" service update "${fn}" "${common[@]}" "$@"
  else
    kn --context "${CONTEXT}" service create "${fn}" "${common[@]}" "$@"
  fi
}

cmd_deploy_kn() {
  need kubectl "install kubectl (${KUBECTL_URL})"
  need kn "install the Knative CLI (https://knative.dev/docs/client/install-kn/) or use 'just deploy'"
  require_knative
  cmd_secrets
  reset_migrate_job
  # Everything from knative/ except the Knative Services themselves (those are
  # labelled app.kubernetes.io/component=function): namespace, backends,
  # ConfigMap, Secret and the migration Job.
  say "kubectl apply -k knative/ -l 'app.kubernetes.io/component!=function'"
  k apply -k knative/ -l 'app.kubernetes.io/component!=function'
  wait_backends

  say "kn: auth"
  kn_apply auth \
    --env-value-from TOKEN_SIGNING_KEY=secret:flashsale-secrets:TOKEN_SIGNING_KEY \
    --env HASH_WORKERS=1 --env HASH_QUEUE=4 \
    --scale-metric concurrency --scale-max 20 --scale-target 3 --scale-utilization 80 --concurrency-limit 4 \
    --timeout 30 --request cpu=1,memory=128Mi --limit cpu=1,memory=256Mi
  say "kn: stock"
  kn_apply stock \
    --env-value-from ADMIN_TOKEN=secret:flashsale-secrets:ADMIN_TOKEN \
    --scale-metric concurrency --scale-max 10 --scale-target 16 --scale-utilization 70 --concurrency-limit 64 \
    --timeout 10 --request cpu=250m,memory=64Mi --limit cpu=1,memory=128Mi
  say "kn: order"
  kn_apply order \
    --env HOLD_TTL_SECONDS=15 \
    --env CHECKOUT_RATE_PER_USER=100/10s --env CHECKOUT_RATE_PER_IP=1000/10s \
    --env CLIENT_IP_SOURCE=x-forwarded-for --env TRUSTED_PROXIES=127.0.0.0/8,::1,10.244.0.0/16 \
    --scale-metric rps --scale-max 20 --scale-target 2000 --scale-utilization 70 --concurrency-limit 1200 \
    --timeout 10 --request cpu=250m,memory=128Mi --limit cpu=1,memory=256Mi
  print_urls
}

cmd_status() {
  need kubectl "install kubectl (${KUBECTL_URL})"
  k version >/dev/null 2>&1 || die "cannot reach cluster context ${CONTEXT}: run 'just cluster-up'"
  say "Knative Services (namespace ${NS})"
  k -n "${NS}" get ksvc 2>/dev/null || echo "(none: Knative not installed or nothing deployed)"
  say "revisions"
  k -n "${NS}" get revisions 2>/dev/null || true
  say "pods (function pods exist only while there is traffic: scale to zero)"
  k -n "${NS}" get pods -o wide
  say "migration job"
  k -n "${NS}" get job flashsale-migrate 2>/dev/null || echo "(not present: finished jobs are removed after a day)"
}

case "${1:-}" in
  cluster-up) cmd_cluster_up ;;
  cluster-down) cmd_cluster_down ;;
  secrets) cmd_secrets ;;
  deploy) cmd_deploy ;;
  deploy-kn) cmd_deploy_kn ;;
  status) cmd_status ;;
  *) echo "usage: $0 cluster-up|cluster-down|secrets|deploy|deploy-kn|status" >&2; exit 2 ;;
esac
