#!/usr/bin/env bash
# System packages the tests and benchmarks use, installed from Debian's archive when missing:
# nginx (the load balancer in front of two edges; bench/overhead.py's C-proxy floor), chromium (the
# dashboard's browser test) and wrk (bench/overhead.py's load generator). Idempotent; with no
# apt-get (not Debian) it says what is missing and leaves it to you.
set -euo pipefail
declare -A want=([nginx]=nginx-light [chromium]=chromium [wrk]=wrk)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("${want[$cmd]}")
done
((${#missing[@]})) || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: please install ${missing[*]} (no apt-get here)" >&2
  exit 0
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "system-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
