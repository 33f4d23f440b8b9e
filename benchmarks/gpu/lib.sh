# Shared by the GPU study scripts (sourced): `run NAME LIMIT CMD...` runs CMD into $W/logs/NAME.log,
# bounded by LIMIT seconds and by DEADLINE (epoch seconds; it starts nothing within 25 s of it, so that
# a final `pack` still runs), then prints the result lines of the log and the exit code.
run() { local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) - 25 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "=== $name: skipped, ${left}s left before the deadline"; return 0; fi
  echo "=== $name $(date +%T) (limit ${limit}s): $*" | cut -c1-400; local t0=$SECONDS
  # --foreground: in the caller's process group, so killing a queue's group (kill -- -PID) stops its running
  # point too (without it timeout makes a group of its own: on 2026-12-07 a point outlived its killed queue
  # and shared the GPU with the regression check that followed)
  timeout --foreground "$limit" "$@" >> "$W/logs/$name.log" 2>&1; local rc=$?
  grep -E "^(ok|oom|error|unava|skip|failed) |NOISY|Error|error:|Traceback" "$W/logs/$name.log" | tail -n 8
  echo "=== $name rc=$rc $((SECONDS-t0))s"; }
# The tables, figures and logs (no traces, no drift reference outputs) into $OUT as one archive.
pack() {
  tar czf "${OUT:-/tmp}/study-$(date +%H%M%S).tgz" --exclude='*.pickle' --exclude='*.nsys-rep' --exclude='*.qdstrm' \
    --exclude='*.sqlite' --exclude='drift_reference' --exclude='hydra' --exclude='trace.json' -C "$W" . 2>&1 | tail -n 3
  ls -la "${OUT:-/tmp}"; }
