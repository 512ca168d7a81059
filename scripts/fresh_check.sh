#!/usr/bin/env bash
# Run the README's two set-up commands the way a new machine does: clone HEAD (committed files only) into a
# temporary directory, with a fresh virtualenv and a fresh data / compilation cache, then
#   ./scripts/quickstart.sh --tiny     (the main job, reduced)
#   ./scripts/test.sh                  (the test suite; --runs N times in a row)
# and report pass/fail and the wall time of each step. Exit 0 only if every step passed.
#
# Usage: scripts/fresh_check.sh [--runs N] [--devices K] [--skip-quickstart] [--keep] [-- PYTEST_ARGS...]
#   --devices K   run the tests on K fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=K)
#   --keep        keep the temporary clone (its logs are in .fresh_logs/)
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
runs=1 devices="" quickstart=1 keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    --skip-quickstart) quickstart=0; shift ;;
    --keep) keep=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--runs N] [--devices K] [--skip-quickstart] [--keep] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/scaling-fresh.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$tmp"' EXIT
git clone -q --no-hardlinks "$src" "$tmp/repo" || exit 1
cd "$tmp/repo" || exit 1
mkdir -p .fresh_logs
export SCALING_CACHE="$tmp/cache" WANDB_MODE=offline
echo "fresh clone of $(git rev-parse --short HEAD) ($(git log -1 --format=%s | cut -c1-70)) in $tmp/repo"
echo "machine: $(nproc) cores, $(python3 --version 2>&1)${devices:+, tests on $devices fake CPU devices}"
status=0
step() {  # step NAME LOG CMD...: run, time, report
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  local tail; tail=$(grep -E '^[=]+ .*(passed|failed|error).* in ' "$log" | tail -1 | tr -d '=' | sed 's/^ *//')
  printf '%-34s %s  %dm%02ds  %s\n' "$name" "$([ $rc = 0 ] && echo PASS || echo "FAIL (exit $rc)")" $((dt / 60)) $((dt % 60)) "$tail"
  if [ $rc != 0 ]; then status=1; grep -E '^(FAILED|ERROR)' "$log" | head -20; tail -5 "$log"; fi
}
if [ "$quickstart" = 1 ]; then
  step "setup + quickstart --tiny" .fresh_logs/quickstart.log ./scripts/quickstart.sh --tiny --no-progress
fi
for i in $(seq 1 "$runs"); do
  if [ -n "$devices" ]; then
    step "tests run $i/$runs (${devices} devices)" ".fresh_logs/tests$i.log" env XLA_FLAGS="--xla_force_host_platform_device_count=$devices" ./scripts/test.sh -q "$@"
  else
    step "tests run $i/$runs" ".fresh_logs/tests$i.log" ./scripts/test.sh -q "$@"
  fi
done
[ "$keep" = 1 ] && echo "logs: $tmp/repo/.fresh_logs"
exit $status
