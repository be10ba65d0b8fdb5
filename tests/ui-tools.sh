#!/usr/bin/env bash
# Provides what the dashboard tests drive a real browser with, under DIR (idempotent), and prints
# `chromium=PATH`, `node=PATH` and `modules=PATH` — or `missing=WHAT TO DO` when Chromium cannot be
# had on this machine (the tests then say they skipped, and why), or `error=WHY` when something
# else is wrong (the tests fail with it):
# - Chromium from Debian's `chromium` package, installed with apt-get when it is missing and this
#   runs as root (the package lists are refreshed once if they are stale);
# - playwright-core from npm (pinned; it downloads no browser of its own: the tests point it at
#   that Chromium with `executablePath`), installed into DIR/node.
set -euo pipefail
dir="${1:?usage: ui-tools.sh DIR}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
exec 9>"$dir/.lock"
flock 9
PLAYWRIGHT=1.65.2
chrome=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chrome" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq chromium >&2; } || true
  chrome=$(command -v chromium || true)
fi
if [ -z "$chrome" ]; then
  echo "missing=Chromium is not installed and could not be installed here: run \`apt-get install -y chromium\` as root (Debian's package), then run the tests again"
  exit 0
fi
node=$(command -v node || true)
if [ -z "$node" ]; then
  echo "error=Node.js is not installed: run \`apt-get install -y nodejs npm\` as root, then run the tests again"
  exit 0
fi
if [ ! -f "$dir/node/node_modules/playwright-core/package.json" ] \
  || ! grep -q "\"version\": \"$PLAYWRIGHT\"" "$dir/node/node_modules/playwright-core/package.json"; then
  mkdir -p "$dir/node"
  (cd "$dir/node" && [ -f package.json ] || echo '{"private": true}' > package.json)
  (cd "$dir/node" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT" >&2) || {
    echo "error=npm could not install playwright-core@$PLAYWRIGHT from the npm registry (see above)"
    exit 0
  }
fi
echo "chromium=$chrome"
echo "node=$node"
echo "modules=$dir/node/node_modules"
