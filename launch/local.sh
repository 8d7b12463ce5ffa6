#!/usr/bin/env bash
# Runs `python -m mcjax.main` as N processes on this machine, joined by jax.distributed
# over 127.0.0.1 with CPU devices: a multi-host job on one machine.
#
#   launch/local.sh 2 --config configs/digits.py --workdir runs/digits-2proc
#
# Every line a process prints is prefixed with its index. If one process fails, the
# others are stopped and the script exits with the first failure's status (75: stopped
# by SIGTERM after a checkpoint; run the same command again to resume).
#
# Environment: PYTHON (default: python3), DEVICES_PER_PROCESS (CPU devices per process,
# default 1), PORT (the coordinator's port, default: a free one).
set -euo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES [mcjax.main flags...]" >&2
  exit 2
}
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift
python=${PYTHON:-python3}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export JAX_PLATFORMS=cpu
export JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-1}

pids=()
for ((i = 0; i < num_processes; i++)); do
  flags=(--coordinator_address="127.0.0.1:$port" --num_processes="$num_processes" --process_id="$i")
  echo "+ [$i] JAX_NUM_CPU_DEVICES=$JAX_NUM_CPU_DEVICES $python -m mcjax.main ${flags[*]} $*" >&2
  "$python" -m mcjax.main "${flags[@]}" "$@" \
    > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=("$!")
done

# A scheduler's SIGTERM goes to every process, which saves and exits with 75. (Ctrl-C
# reaches them all directly: they are in this terminal's process group.)
trap 'echo "+ SIGTERM to every process" >&2; kill -TERM "${pids[@]}" 2>/dev/null || true' TERM

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  finished=""
  if wait -n -p finished "${running[@]}"; then rc=0; else rc=$?; fi
  [[ -n ${finished:-} ]] || continue  # a trapped signal interrupted the wait
  for j in "${!running[@]}"; do
    [[ ${running[$j]} != "$finished" ]] || unset 'running[j]'
  done
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "+ process with pid $finished exited with status $rc; stopping the others" >&2
    kill -TERM "${running[@]}" 2>/dev/null || true
  fi
done
wait  # the output filters
exit "$status"
