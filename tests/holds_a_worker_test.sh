#!/usr/bin/env bash
# Holds the worker that runs it for WAIT_S seconds (tests/BUILD.bazel: holds_a_worker_test).
set -euo pipefail
if [[ ! "${WAIT_S:-}" =~ ^[0-9]+$ ]]; then
  echo "holds_a_worker_test: set WAIT_S (--test_env=WAIT_S=SECONDS)" >&2
  exit 2
fi
sleep "$WAIT_S"
