#!/usr/bin/env bash
# CopyLoRA's two entry points on a fresh machine:
#   bash dev.sh demo   the main job: train copy-machine LoRAs on a tiny built-in model and merge their difference
#   bash dev.sh test   the test suite (the WebUI tier runs too when COPYLORA_WEBUI_DIR or COPYLORA_WEBUI_URL is set)
# Both create .venv on first use and install requirements-dev.txt into it; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${COPYLORA_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.copylora-installed"
  if [ ! -f "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "dev.sh: installing requirements into $VENV (first run only)" >&2
    "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
    "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
    touch "$stamp"
  fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) setup; exec "$PY" -m lib_copylora demo "$@" ;;
  test) setup; exec "$PY" -m pytest "$@" ;;
  setup) setup ;;
  *) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
