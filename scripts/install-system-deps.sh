#!/usr/bin/env bash
# Installs the Debian packages Ferry's build, tests and demo need, only where they are missing, so a warm
# machine never touches apt. One list, one place: add a package here, never by hand on a machine.
set -euo pipefail
# command-name:debian-package
needed=(
  "openssl:openssl"      # devcluster PKI
  "make:make"            # the README's commands
  "git:git"
  "curl:curl"
  "promtool:prometheus"  # promtool: checks and unit-tests the alert rules (tests/observability)
)
missing=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
