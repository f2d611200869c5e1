#!/usr/bin/env bash
# Install legseg and its pinned dependencies into the current Python environment.
# Shared by the Dockerfile, Singularity.def and CI so that all three install the same way.
#   docker/install.sh [--variant cpu|gpu] [--test] [SOURCE_DIR]
set -euo pipefail
variant=cpu
extras=reports,validator
src=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift 2 ;;
    --test) extras="$extras,test"; shift ;;
    *) src=$1; shift ;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "install.sh: --variant must be cpu or gpu, got '$variant'" >&2; exit 64 ;; esac
python -m pip install --no-cache-dir --upgrade "pip>=24"
python -m pip install --no-cache-dir -e "$src[$variant,$extras]"
