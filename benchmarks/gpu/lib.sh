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
# What this machine is: the GPU, the Python/torch/CUDA/cuDNN versions, FlashAttention-4's.
machine() {
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,power.limit --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  python3 -c "import flash_attn.cute, importlib.metadata as m; print('flash-attn-4', m.version('flash-attn-4'))" 2>&1 | tail -n 1; }
# `SCRIPT run-queue` as one background queue that outlives the device call (setsid), from a copy of the
# script and this file in $W; the variables named after SCRIPT go with it (QUEUE, EXTRA, ...).
start_queue() { local script=$1; shift
  cp "$script" "$W/queue.sh"; cp "$(dirname "$script")/lib.sh" "$W/lib.sh"
  setsid nohup env DEADLINE=$(( $(date +%s) + 4000 )) VGGT_REPO="$R" "$@" bash "$W/queue.sh" run-queue \
    > "$W/logs/queue.out" 2>&1 < /dev/null &
  echo "queue started: pid $!"; }
# Until the queue is done or DEADLINE is near; then its result lines.
wait_queue() {
  while [ ! -f "$W/queue.done" ] && [ $(( DEADLINE - $(date +%s) )) -gt 40 ]; do sleep 5; done
  grep -E "^=== |^ok|^oom|^error|^unava" "$W/logs/queue.out" | tail -n 30
  [ -f "$W/queue.done" ] && echo "queue done at $(cat "$W/queue.done")"; }
