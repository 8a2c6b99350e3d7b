#!/usr/bin/env bash
# Installs everything ephrun needs to build and test on Debian 12. Idempotent:
# packages already present are skipped, so a second run costs one dpkg query.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  liblua5.4-dev lua5.4 libcurl4-openssl-dev nlohmann-json3-dev libpugixml-dev
  libssh2-1-dev libarchive-dev libssl-dev libspdlog-dev libcli11-dev libsqlite3-dev catch2
  openssh-server openssh-client rsync pssh lua-check clang-format strace time python3-yaml
  cron  # the reaper's crontab path (tests/integration/test_reaper.py)
  gnuplot-nox  # size-sweep's PNG chart (tests/integration/test_size_sweep.py)
  clang libclang-rt-14-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd refuses to start as root without its privilege-separation directory.
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi

# The official Vultr client checks the Vultr API stand-in (tests/fakes/vultr/client).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
client="$(cd "$(dirname "$0")/.." && pwd)/tests/fakes/vultr/client"
if [ ! -d "$client/node_modules" ] || [ "$client/package-lock.json" -nt "$client/node_modules" ]; then
  echo "setup: npm ci in tests/fakes/vultr/client"
  (cd "$client" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$client/node_modules"
fi
