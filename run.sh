#!/usr/bin/env bash
# One entry point for people and CI: sets up ./.venv (idempotent), then runs the main job or the tests.
#   bash run.sh main   [gvu demo options]   set up, then run the main job
#   bash run.sh test   [pytest options]     set up, then run the whole test suite (two worker processes by
#                                           default, a test file per worker; `-n 0` runs it in one process)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
stamp=$VENV/.gvu-setup-$(cat pyproject.toml | sha1sum | cut -c1-12)

setup() {
  if [ -f "$stamp" ]; then return; fi
  [ -x $VENV/bin/python ] || "$PY" -m venv $VENV
  $VENV/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: on CPU machines this takes the CPU build; letting a dependency pull an
  # unpinned torch would fetch a multi-GB CUDA build instead.
  $VENV/bin/python -m pip install -q "torch==2.13.0"
  $VENV/bin/python -m pip install -q -e ".[test]"
  rm -f $VENV/.gvu-setup-*
  touch "$stamp"
}

cmd=${1:-}
shift || true
case "$cmd" in
  main)
    setup
    exec $VENV/bin/gvu demo "$@" ;;
  test)
    setup
    # every test runs torch on one thread (tests/conftest.py), so two workers use both cores of a small machine;
    # whole files go to one worker so a file's module fixtures (a tiny trained model) are built once
    exec $VENV/bin/python -m pytest -q -n "${GVU_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  setup)
    setup ;;
  *)
    echo "usage: bash run.sh main|test|setup [options]" >&2
    exit 2 ;;
esac
