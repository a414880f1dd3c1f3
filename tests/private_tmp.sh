#!/usr/bin/env bash
# --run_under wrapper for tests/test_isolation.py: runs a test with an empty /tmp of its own
# (a tmpfs in a private mount namespace), then prints what the run left there. Only the
# test's own processes see that /tmp, so other work on the machine cannot show up in it.
#
#   --run_under='private_tmp.sh KEEP_DIR... --'
#
# Each KEEP_DIR (the workspace and Bazel's output base, which the test's runfiles point
# into) stays visible at its own path when it lies under /tmp: it is bound back into the
# fresh tmpfs, and left out of the listing.
set -euo pipefail
keep=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  keep+=("$(realpath -e "$1")")
  shift
done
if [[ $# -lt 2 ]]; then
  echo "usage: private_tmp.sh KEEP_DIR... -- COMMAND..." >&2
  exit 2
fi
shift
userns=()
[[ "$(id -u)" == 0 ]] || userns=(--map-root-user)
exec unshare "${userns[@]}" --mount --propagation private bash -c '
  set -e
  kept=("${@:2:$1}")
  shift "$(($1 + 1))"
  # Opened before the tmpfs covers them; bound back from these descriptors afterwards.
  fds=()
  for dir in "${kept[@]}"; do
    exec {fd}<"${dir}"
    fds+=("${fd}")
  done
  mount -t tmpfs tmpfs /tmp
  for i in "${!kept[@]}"; do
    if [[ "${kept[i]}" == /tmp/* ]]; then
      mkdir -p "${kept[i]}"
      mount --no-canonicalize --bind "/proc/self/fd/${fds[i]}" "${kept[i]}"
    fi
    fd="${fds[i]}"
    exec {fd}<&-
  done
  cd "${PWD}"
  # What the tmpfs holds before the run: the kept folders (not entered: other file systems) and their parents.
  listing() { (cd /tmp && find . -mindepth 1 -xdev | sort); }
  before="$(listing)"
  set +e
  "$@"
  code=$?
  left="$(comm -13 <(echo "${before}") <(listing) | tr "\n" " ")"
  echo "private /tmp after the run: [${left% }]"
  exit "${code}"' private_tmp "${#keep[@]}" "${keep[@]}" "$@"
