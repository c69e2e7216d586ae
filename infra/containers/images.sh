#!/usr/bin/env bash
# Container images for the three functions, and loading them into kind.
# Called by `just images` / `just kind-load` (infra/deploy.just); usable alone:
#
#   infra/containers/images.sh build       musl binaries -> dev.local/flashsale/<fn>:<version>
#   infra/containers/images.sh ensure      the same, but (re)builds an image only when it is
#                                          missing or its binary changed (infra/containers/test.sh)
#   infra/containers/images.sh kind-load   side-load those images into the kind cluster
#
# Environment: FLASHSALE_VERSION (default 0.1.0), FLASHSALE_CLUSTER (default flashsale),
# FLASHSALE_ENGINE=docker|podman to force an engine, SKIP_CARGO=1 to reuse built binaries,
# CARGO_TARGET_DIR (default target/) where cargo puts the binaries and the build contexts.
#
# Each image carries the label io.flashsale.binary.sha256 (the sha256 of the
# binary inside), which is how `ensure` tells a stale image from a current one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

VERSION="${FLASHSALE_VERSION:-0.1.0}"
CLUSTER="${FLASHSALE_CLUSTER:-flashsale}"
TARGET="x86_64-unknown-linux-musl"
# cargo resolves a relative CARGO_TARGET_DIR against the working directory,
# which is ${ROOT} here.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SHA_LABEL="io.flashsale.binary.sha256"
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

# The `image` profile: release, but optimised for size, so that an image
# stays within 8 MB (with release's opt-level 3 and thin LTO each binary is
# ~21 MB). It is defined here, not in Cargo.toml, so host builds (and the
# Lambda artefact, `cargo lambda build --release`) are untouched; it only
# ever builds the musl target. opt-level "z", fat LTO and one codegen unit
# for everything except the crates that do the CPU work, which keep
# opt-level 3: argon2id (login, register) and Ed25519/SHA-2 (token signing,
# and verification on every checkout). IMAGE_OPT_LEVEL overrides the rest
# (3 = release's speed, "s" = a little larger; load/capacity.md has figures).
#
# The link packs the static-pie's relative relocations (-z
# pack-relative-relocs, DT_RELR; musl >= 1.2.4 applies them at start): the
# binary keeps its ASLR (still position independent) without ~450 KB of
# .rela.dyn, one 24-byte entry per pointer in its data. RUSTFLAGS, when set,
# replaces these flags.
IMAGE_PROFILE=(
  --config 'profile.image.inherits="release"'
  --config "profile.image.opt-level=\"${IMAGE_OPT_LEVEL:-z}\""
  --config 'profile.image.lto="fat"'
  --config 'profile.image.codegen-units=1'
  --config "target.${TARGET}.rustflags=[\"-C\", \"link-arg=-Wl,-z,pack-relative-relocs\"]"
)
for crate in argon2 blake2 sha2 curve25519-dalek ed25519-dalek; do
  IMAGE_PROFILE+=(--config "profile.image.package.${crate}.opt-level=3")
done

binary_of() { printf '%s/%s/image/%s' "${TARGET_DIR}" "${TARGET}" "$1"; }

build_binaries() {
  if [[ "${SKIP_CARGO:-0}" != 1 ]]; then
    ensure_musl_toolchain
    say "cargo build --profile image --target ${TARGET} -p auth -p stock -p order  (target dir: ${TARGET_DIR})"
    cargo build "${IMAGE_PROFILE[@]}" --profile image --target "${TARGET}" -p auth -p stock -p order
  fi
  local fn bin
  for fn in "${FUNCTIONS[@]}"; do
    bin="$(binary_of "${fn}")"
    [[ -x "${bin}" ]] || die "${bin} missing: the cargo build did not produce it"
    if have file && ! file -L "${bin}" | grep -Eq 'statically linked|static-pie linked'; then
      die "${bin} is not statically linked; a FROM scratch image needs a static binary"
    fi
  done
}

# The sha256 label of an image, or nothing when the image does not exist.
image_sha() {
  "${ENGINE[@]}" image inspect --format "{{ index .Config.Labels \"${SHA_LABEL}\" }}" "$1" 2>/dev/null || true
}

build_image() {
  local fn=$1 sha=$2 bin ctx
  bin="$(binary_of "${fn}")"
  # Minimal build context: the binary and the CA bundle, nothing else.
  ctx="${TARGET_DIR}/image-context/${fn}"
  rm -rf "${ctx}"
  mkdir -p "${ctx}"
  cp "${bin}" "${ctx}/${fn}"
  cp "${CA_BUNDLE}" "${ctx}/ca-certificates.crt"
  say "${ENGINE_NAME} build $(image_of "${fn}")"
  "${ENGINE[@]}" build \
    -f infra/containers/Containerfile \
    --build-arg "FUNCTION=${fn}" \
    --build-arg "VERSION=${VERSION}" \
    --label "${SHA_LABEL}=${sha}" \
    -t "$(image_of "${fn}")" \
    "${ctx}"
}

# build: always rebuild the images. ensure: only those that are missing or
# whose binary changed since they were built.
cmd_build() {
  local mode=$1
  pick_engine
  [[ -r "${CA_BUNDLE}" ]] || die "CA bundle ${CA_BUNDLE} not found: install ca-certificates (or set CA_BUNDLE=path)"
  build_binaries

  local fn sha
  for fn in "${FUNCTIONS[@]}"; do
    sha="$(sha256sum "$(binary_of "${fn}")" | cut -d' ' -f1)"
    if [[ "${mode}" == ensure && "$(image_sha "$(image_of "${fn}")")" == "${sha}" ]]; then
      say "$(image_of "${fn}") is up to date (binary sha256 ${sha:0:12})"
      continue
    fi
    build_image "${fn}" "${sha}"
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
      mkdir -p "${TARGET_DIR}/images"
      say "podman save ${img} | kind load image-archive"
      rm -f "${TARGET_DIR}/images/${fn}.tar"
      "${ENGINE[@]}" save --format docker-archive -o "${TARGET_DIR}/images/${fn}.tar" "${img}"
      kind load image-archive "${TARGET_DIR}/images/${fn}.tar" --name "${CLUSTER}"
    fi
  done
}

case "${1:-}" in
  build) cmd_build build ;;
  ensure) cmd_build ensure ;;
  kind-load) cmd_kind_load ;;
  *) echo "usage: $0 build|ensure|kind-load" >&2; exit 2 ;;
esac
