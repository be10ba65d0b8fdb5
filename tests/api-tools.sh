#!/usr/bin/env bash
# Provides the tools the API tests check the server with, under DIR (idempotent), and prints
# `promtool=PATH` and `st=PATH`:
# - promtool, from Debian's `prometheus` package (unpacked with dpkg -x, not installed), unless
#   one is on PATH;
# - nginx, from Debian's `nginx` package (unpacked the same way; it has the WebDAV module the
#   remote-cache tests serve `PUT` with), unless one is on PATH; prints `nginx=PATH`;
# - schemathesis and in-toto-attestation (the in-toto framework's Python bindings, which the
#   provenance tests validate statements with), from PyPI, in a virtualenv; also prints
#   `python=PATH` of that virtualenv.
set -euo pipefail
dir="${1:?usage: api-tools.sh DIR}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
exec 9>"$dir/.lock"
flock 9
if command -v promtool >/dev/null 2>&1; then
  echo "promtool=$(command -v promtool)"
else
  if [ ! -x "$dir/prometheus/usr/bin/promtool" ]; then
    # apt's package lists may be missing on a fresh machine: refresh them once if so.
    (cd "$dir" && rm -f prometheus_*.deb \
      && { apt-get download prometheus >&2 || { apt-get update -qq >&2 && apt-get download prometheus >&2; }; } \
      && dpkg -x prometheus_*.deb prometheus && rm -f prometheus_*.deb)
  fi
  echo "promtool=$dir/prometheus/usr/bin/promtool"
fi
if command -v nginx >/dev/null 2>&1; then
  echo "nginx=$(command -v nginx)"
else
  if [ ! -x "$dir/nginx/usr/sbin/nginx" ]; then
    (cd "$dir" && rm -f nginx_*.deb \
      && { apt-get download nginx >&2 || { apt-get update -qq >&2 && apt-get download nginx >&2; }; } \
      && dpkg -x nginx_*.deb nginx && rm -f nginx_*.deb)
  fi
  echo "nginx=$dir/nginx/usr/sbin/nginx"
fi
if [ ! -x "$dir/venv/bin/st" ]; then
  python3 -m venv "$dir/venv" >&2
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5" >&2
fi
echo "st=$dir/venv/bin/st"
if ! "$dir/venv/bin/python" -c "import in_toto_attestation.v1.statement" 2>/dev/null; then
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "in-toto-attestation==0.9.3" >&2
fi
echo "python=$dir/venv/bin/python"
