#!/usr/bin/env bash
# Container stage: build the legseg image on a locally made base image and test it for real.
#
#   bash .ci/container_test.sh
#
# No public registry is needed. Steps:
#   1. Docker engine: the one DOCKER_HOST / the default socket reaches, else (as root) a private
#      dockerd (Debian's docker.io, installed with apt-get when missing) with its own data root
#      and socket in a temporary folder and no bridge/iptables networking.
#   2. Base image: $LEGSEG_BASE_IMAGE when given, else a minimal Debian bookworm root
#      (debootstrap, with python3.11 + venv) imported as legseg-ci-base:bookworm.
#   3. docker build (BuildKit) with this machine's pip TLS certificate passed as a build secret
#      (never stored in the image), --network host.
#   4. pytest tests/test_docker_image.py against the built image (LEGSEG_TEST_IMAGE); a skipped
#      image test fails the stage.
# Without an engine (not root, no dockerd) the stage fails loudly, unless LEGSEG_NO_CONTAINER_ENGINE=1
# declares that this machine has none (then it says "NOT RUN" and exits 0).
#
# Environment: LEGSEG_VARIANT (cpu|gpu, default cpu), LEGSEG_BASE_IMAGE, LEGSEG_DOCKER_ROOT (keep
# the engine's data and the base rootfs between runs), LEGSEG_VENV (Python env with legseg and
# pytest for the test side, default .venv), LEGSEG_IMAGE_TAG (default legseg:ci-<variant>),
# LEGSEG_IMAGE_NAME (the Dockerfile's IMAGE_NAME: the name the outputs record, default legseg).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
variant=${LEGSEG_VARIANT:-cpu}
tag=${LEGSEG_IMAGE_TAG:-legseg:ci-$variant}
image_name=${LEGSEG_IMAGE_NAME:-legseg}
venv=${LEGSEG_VENV:-.venv}
python="$venv/bin/python"
[ -x "$python" ] || python=python3
scratch=$(mktemp -d /tmp/legseg-ci-container.XXXXXX)
root=${LEGSEG_DOCKER_ROOT:-$scratch/engine}
mkdir -p "$root"
dockerd_pid=""
cleanup() {
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$scratch" 2>/dev/null || true
}
trap cleanup EXIT
log() { echo "== container: $*"; }
free_mb() { df -Pm "$1" | awk 'NR == 2 { print $4 }'; }
# A build from scratch peaks at about 3 GB on the engine's disk (base root, pip downloads, the
# 2.2 GB image); measured 2.9 GB for the stage on 2026-11-30.
needed_mb=3000

skip_all() {
  log "NOT RUN: $1"
  if [ "${LEGSEG_NO_CONTAINER_ENGINE:-0}" = 1 ]; then
    log "LEGSEG_NO_CONTAINER_ENGINE=1 declares that this machine has no container engine:"
    log "the image tests were NOT run (the stage passes only because of that declaration)"
    exit 0
  fi
  log "FAIL: the container stage could not run; on a machine without a container engine set"
  log "LEGSEG_NO_CONTAINER_ENGINE=1 to declare it (never a silent pass)"
  exit 1
}

# ---- 1. engine -------------------------------------------------------------------------------
docker_cli=${DOCKER:-docker}
if ! "$docker_cli" info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || skip_all "no reachable Docker engine and not root (cannot start dockerd)"
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || skip_all "dockerd/debootstrap missing and no apt-get"
    log "installing docker.io and debootstrap with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends docker.io debootstrap) >"$scratch/apt.log" 2>&1 \
      || { tail -20 "$scratch/apt.log"; skip_all "apt-get install docker.io debootstrap failed"; }
  fi
  sock="$root/docker.sock"
  log "starting a private dockerd (data root $root)"
  dockerd --data-root "$root/data" --exec-root "$scratch/exec" -H "unix://$sock" \
    --pidfile "$scratch/docker.pid" --bridge=none --iptables=false --ip6tables=false \
    >"$scratch/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$sock"
  for _ in $(seq 60); do "$docker_cli" info >/dev/null 2>&1 && break; sleep 1; done
  if ! "$docker_cli" info >/dev/null 2>&1; then
    tail -20 "$scratch/dockerd.log"
    skip_all "dockerd did not start (see its log above)"
  fi
fi
# BuildKit is needed for the build secrets: buildx, or a pre-23 client with built-in BuildKit.
if ! "$docker_cli" buildx version >/dev/null 2>&1; then
  for candidate in /usr/bin/docker "$docker_cli"; do
    major=$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then docker_cli=$candidate; break; fi
  done
fi
export DOCKER_BUILDKIT=1
log "engine $("$docker_cli" version --format '{{.Server.Version}}'), client $docker_cli"

# ---- 2. base image ---------------------------------------------------------------------------
base=${LEGSEG_BASE_IMAGE:-}
if [ -z "$base" ]; then
  base=legseg-ci-base:bookworm
  if ! "$docker_cli" image inspect "$base" >/dev/null 2>&1; then
    rootfs="$root/rootfs-bookworm"
    if [ ! -x "$rootfs/usr/bin/python3.11" ]; then
      command -v debootstrap >/dev/null || skip_all "debootstrap missing (apt-get install debootstrap)"
      log "debootstrap Debian bookworm (minbase + python3.11) into $rootfs"
      rm -rf "$rootfs"
      t0=$(date +%s)
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "${LEGSEG_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$scratch/debootstrap.log" 2>&1 \
        || { tail -20 "$scratch/debootstrap.log"; exit 1; }
      log "debootstrap took $(( $(date +%s) - t0 )) s"
    fi
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* 2>/dev/null || true
    tar -C "$rootfs" -c . | "$docker_cli" import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  fi
fi
log "base image $base"

# ---- 3. build --------------------------------------------------------------------------------
secrets=()
cert=${PIP_CERT:-}
[ -n "$cert" ] || cert=$("$python" -m pip config get global.cert 2>/dev/null || true)
if [ -n "$cert" ] && [ -f "$cert" ]; then secrets+=(--secret "id=ca.crt,src=$cert"); fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
  printf '[global]\nindex-url = %s\n' "$PIP_INDEX_URL" >"$scratch/pip.conf"
  secrets+=(--secret "id=pip.conf,src=$scratch/pip.conf")
fi
# The engine's disk: the private data root, or wherever the reachable engine keeps its data.
engine_dir=$("$docker_cli" info --format '{{.DockerRootDir}}' 2>/dev/null || true)
[ -d "$engine_dir" ] || engine_dir=$root
free=$(free_mb "$engine_dir")
log "building $tag (variant $variant); $free MB free on the engine's disk ($engine_dir)"
if [ "$free" -lt "$needed_mb" ]; then
  log "WARNING: a build from scratch needs about $needed_mb MB there; it may fail for want of space"
fi
build_failed() {  # $1: build log
  tail -60 "$1"
  if grep -q "No space left on device" "$1"; then
    log "FAIL: the engine's disk ($engine_dir) ran out of space: $(free_mb "$engine_dir") MB free" \
        "now, about $needed_mb MB needed for a build from scratch"
  fi
}
t0=$(date +%s)
"$docker_cli" build --network host --progress plain \
  --build-arg "BASE_IMAGE=$base" --build-arg "VARIANT=$variant" --build-arg "IMAGE_NAME=$image_name" \
  "${secrets[@]}" -t "$tag" . >"$scratch/build.log" 2>&1 \
  || { build_failed "$scratch/build.log"; log "build FAILED"; exit 1; }
build_s=$(( $(date +%s) - t0 ))
size=$("$docker_cli" image inspect "$tag" --format '{{.Size}}')
log "built $tag in ${build_s} s; image size $(( size / 1000000 )) MB ($size bytes)"
"$docker_cli" history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | cut -c1-110 | grep -v '^0B' || true
if grep -rq -- "BEGIN CERTIFICATE" <("$docker_cli" history --no-trunc "$tag" 2>/dev/null); then
  log "FAIL: a certificate leaked into the image history"; exit 1
fi

# ---- 4. tests --------------------------------------------------------------------------------
export LEGSEG_TEST_IMAGE=$tag DOCKER="$docker_cli"
t0=$(date +%s)
# An image test that skips (client, engine or image not found from pytest) fails the stage.
image_tests() {
  local summary
  "$python" -m pytest -q -rs -p no:cacheprovider tests/test_docker_image.py "$@" \
    | tee "$scratch/pytest.log"
  summary=$(tail -1 "$scratch/pytest.log")
  if [[ $summary == *skipped* || $summary != *passed* ]]; then
    log "FAIL: image tests did not all run: $summary"; exit 1
  fi
}
image_tests -k "not paclet"
log "image tests took $(( $(date +%s) - t0 )) s"

# ---- 5. the paclet build path ----------------------------------------------------------------
# A fake QMRITools release paclet (test helper: release layout, >= 11.3.2 encodings, narrow
# widths) dropped into container/paclets/ is converted at build time into
# /opt/legseg/models-qmritools; the image then segments with those networks only.
paclet="container/paclets/QMRITools-ci-fake.paclet"
trap 'rm -f "$repo/$paclet"; cleanup' EXIT
"$python" -c 'import sys; from pathlib import Path; from tests.qmritools_paclet import build_fake_paclet; build_fake_paclet(Path(sys.argv[1]), seed=3, widths="small")' "$paclet"
log "building $tag-paclet with $paclet"
t0=$(date +%s)
"$docker_cli" build --network host --progress plain \
  --build-arg "BASE_IMAGE=$base" --build-arg "VARIANT=$variant" --build-arg "IMAGE_NAME=$image_name" \
  "${secrets[@]}" -t "$tag-paclet" . >"$scratch/build-paclet.log" 2>&1 \
  || { build_failed "$scratch/build-paclet.log"; log "paclet build FAILED"; exit 1; }
rm -f "$paclet"
grep -E "bake_models|legseg-import|N5_UpperLeg|Body_Pos_Side" "$scratch/build-paclet.log" | cut -c1-160 | tail -8 || true
log "built $tag-paclet in $(( $(date +%s) - t0 )) s"
LEGSEG_TEST_IMAGE="$tag-paclet" LEGSEG_TEST_PACLET_IMAGE=1 \
  image_tests -k paclet
log "paclet image test done"
