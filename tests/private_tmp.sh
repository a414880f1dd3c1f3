#!/usr/bin/env bash
# --run_under wrapper for tests/test_isolation.py: runs a test with an empty /tmp of its own
# (a tmpfs in a private mount namespace), then prints what the run left there. Only the
# test's own processes see that /tmp, so other work on the machine cannot show up in it.
set -euo pipefail
userns=()
[[ "$(id -u)" == 0 ]] || userns=(--map-root-user)
exec unshare "${userns[@]}" --mount --propagation private bash -c '
  mount -t tmpfs tmpfs /tmp
  "$@"
  code=$?
  echo "private /tmp after the run: [$(cd /tmp && find . -mindepth 1 | sort | tr "\n" " ")]"
  exit "${code}"' private_tmp "$@"
