#!/usr/bin/env bash
# Container images for the three functions, and loading them into kind.
# Called by `just images` / `just kind-load` (infra/deploy.just); usable alone:
#
#   infra/containers/images.sh build       musl binaries -> dev.local/flashsale/<fn>:<version>
#   infra/containers/images.sh kind-load   side-load those images into the kind cluster
#
# Environment: FLASHSALE_VERSION (default 0.1.0), FLASHSALE_CLUSTER (default flashsale),
# FLASHSALE_ENGINE=docker|podman to force an engine, SKIP_CARGO=1 to reuse built binaries.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

VERSION="${FLASHSALE_VERSION:-0.1.0}"
CLUSTER="${FLASHSALE_CLUSTER:-flashsale}"
TARGET="x86_64-unknown-linux-musl"
FUNCTIONS=(auth stock order)
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
image_of() { printf 'dev.local/flashsale/%s:%s' "$1" "${VERSION}"; }

# Sets ENGINE (array): docker if its daemon answers, else podman.
pick_engine() {
  local want="${FLASHSALE_ENGINE:-}"
  if [[ "${want}" != podman ]] && have docker && docker info >/dev/null 2>&1; then
    ENGINE=(docker); ENGINE_NAME=docker; return
  fi
  if [[ "${want}" != docker ]] && have podman; then
    ENGINE=(podman --cgroup-manager=cgroupfs)
    # runc avoids crun/systemd issues in nested or rootless setups; use it when present.
    if have runc; then ENGINE=(podman --runtime runc --cgroup-manager=cgroupfs); fi
    ENGINE_NAME=podman; return
  fi
  die "no working container engine: install Docker (and start its daemon) or Podman"
}

sudo_if_needed() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

ensure_musl_toolchain() {
  have cargo || die "cargo not found: install Rust from https://rustup.rs"
  if have rustup; then
    if ! rustup target list --installed | grep -qx "${TARGET}"; then
      say "rustup target add ${TARGET}"
      rustup target add "${TARGET}"
    fi
  else
    echo "rustup not found: assuming the ${TARGET} standard library is installed" >&2
  fi
  local missing=()
  have musl-gcc || missing+=(musl-tools)
  have cmake || missing+=(cmake)
  if ((${#missing[@]})); then
    if have apt-get; then
      say "apt-get install ${missing[*]}"
      sudo_if_needed apt-get install -y "${missing[@]}"
    else
      die "missing ${missing[*]}: install musl-gcc (Debian/Ubuntu: musl-tools; Fedora: musl-gcc) and cmake"
    fi
  fi
}

cmd_build() {
  pick_engine
  [[ -r "${CA_BUNDLE}" ]] || die "CA bundle ${CA_BUNDLE} not found: install ca-certificates (or set CA_BUNDLE=path)"
  if [[ "${SKIP_CARGO:-0}" != 1 ]]; then
    ensure_musl_toolchain
    say "cargo build --release --target ${TARGET} -p auth -p stock -p order"
    cargo build --release --target "${TARGET}" -p auth -p stock -p order
  fi

  local fn bin ctx
  for fn in "${FUNCTIONS[@]}"; do
    bin="target/${TARGET}/release/${fn}"
    [[ -x "${bin}" ]] || die "${bin} missing: the cargo build did not produce it"
    if have file && ! file -L "${bin}" | grep -Eq 'statically linked|static-pie linked'; then
      die "${bin} is not statically linked; a FROM scratch image needs a static binary"
    fi
    # Minimal build context: the binary at the path the Containerfile copies
    # from, plus the CA bundle. Nothing else is sent to the engine.
    ctx="target/image-context/${fn}"
    rm -rf "${ctx}"
    mkdir -p "${ctx}/target/${TARGET}/release"
    cp "${bin}" "${ctx}/target/${TARGET}/release/${fn}"
    cp "${CA_BUNDLE}" "${ctx}/ca-certificates.crt"
    say "${ENGINE_NAME} build $(image_of "${fn}")"
    "${ENGINE[@]}" build \
      -f infra/containers/Containerfile \
      --build-arg "FUNCTION=${fn}" \
      --build-arg "VERSION=${VERSION}" \
      -t "$(image_of "${fn}")" \
      "${ctx}"
  done

  say "images (${ENGINE_NAME})"
  local bytes
  for fn in "${FUNCTIONS[@]}"; do
    bytes="$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$(image_of "${fn}")")"
    printf '  %-36s %6.1f MB\n' "$(image_of "${fn}")" "$(awk -v b="${bytes}" 'BEGIN { print b / 1000000 }')"
  done
}

cmd_kind_load() {
  have kind || die "kind not found: install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
  pick_engine
  # kind drives the same engine the images live in.
  if [[ "${ENGINE_NAME}" == podman ]]; then export KIND_EXPERIMENTAL_PROVIDER=podman; fi
  kind get clusters 2>/dev/null | grep -qx "${CLUSTER}" \
    || die "no kind cluster named ${CLUSTER}: run 'just cluster-up' first"
  local fn img
  for fn in "${FUNCTIONS[@]}"; do
    img="$(image_of "${fn}")"
    "${ENGINE[@]}" image inspect "${img}" >/dev/null 2>&1 \
      || die "image ${img} not found in ${ENGINE_NAME}: run 'just images' first"
    if [[ "${ENGINE_NAME}" == docker ]]; then
      say "kind load docker-image ${img}"
      kind load docker-image "${img}" --name "${CLUSTER}"
    else
      mkdir -p target/images
      say "podman save ${img} | kind load image-archive"
      rm -f "target/images/${fn}.tar"
      "${ENGINE[@]}" save --format docker-archive -o "target/images/${fn}.tar" "${img}"
      kind load image-archive "target/images/${fn}.tar" --name "${CLUSTER}"
    fi
  done
}

case "${1:-}" in
  build) cmd_build ;;
  kind-load) cmd_kind_load ;;
  *) echo "usage: $0 build|kind-load" >&2; exit 2 ;;
esac
