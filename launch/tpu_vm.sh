#!/usr/bin/env bash
# Trains on a Cloud TPU VM (a single host or a pod slice): every worker runs the same
# `python -m mcjax.main --distributed=on ARGS...`; jax.distributed finds the other workers
# through the VM's metadata (a later --distributed in ARGS overrides this one).
#
#   NFS=10.0.0.2:/runs launch/tpu_vm.sh all --config configs/cifar100.py \
#       --workdir /mnt/shared/c100
#
# Every worker must see the same workdir: with NFS=HOST:/EXPORT (e.g. a Filestore share)
# `setup` mounts it at $MOUNT (/mnt/shared) on every worker. The workers' own disks are
# separate and go away with the VM (fine only for a one-worker slice and a run you do not
# keep). mcjax writes through POSIX paths, not gs:// URLs. Only the committed HEAD of this
# repository is shipped.
set -euo pipefail

TPU_NAME=${TPU_NAME:-mcjax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
KEEP=${KEEP:-0}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}  # the images have Python 3.10; current jax needs 3.11+
NFS=${NFS:-}
MOUNT=${MOUNT:-/mnt/shared}
REMOTE_DIR=mcjax  # under each worker's home directory

usage() {
  cat >&2 <<EOF
usage: $0 COMMAND [ARGS...]
  create          create the TPU VM
  setup           copy HEAD of this repository to every worker and install it; mount
                  NFS (if set) at MOUNT on every worker
  run ARGS...     start 'python -m mcjax.main --distributed=on ARGS...' on every worker
                  (in the background; log in ~/$REMOTE_DIR/mcjax.log on each worker)
  logs            follow worker 0's log until the run ends; exits with the run's status
  stop            SIGTERM to the run on every worker: it saves a checkpoint and exits 75
  delete          delete the TPU VM
  all ARGS...     create, setup, run ARGS..., logs, then delete (unless KEEP=1)
environment (defaults): TPU_NAME=$TPU_NAME ZONE=$ZONE ACCELERATOR_TYPE=$ACCELERATOR_TYPE
  TPU_VERSION=$TPU_VERSION PROJECT=${PROJECT:-<gcloud default>} SPOT=$SPOT (1: spot VM) KEEP=$KEEP
  PYTHON_VERSION=$PYTHON_VERSION (of the venv on the workers)
  NFS=${NFS:-<none>} (HOST:/EXPORT shared by the workers) MOUNT=$MOUNT (where it is mounted)
A run that exits with status 75 was preempted after saving a checkpoint: 'run' the same
arguments again (after 'create' and 'setup' if the VM is gone) to resume.
EOF
  exit 2
}

say() { printf '+'; printf ' %q' "$@"; printf '\n'; }
do_it() { say "$@" >&2; "$@"; }

gcloud_flags=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then gcloud_flags+=(--project="$PROJECT"); fi

tpu() {  # tpu SUBCOMMAND ARGS...: gcloud compute tpus tpu-vm SUBCOMMAND ARGS... --zone...
  do_it gcloud compute tpus tpu-vm "$@" "${gcloud_flags[@]}"
}

on_workers() {  # on_workers WORKER COMMAND: runs a shell command on one worker or "all"
  tpu ssh "$TPU_NAME" --worker="$1" --command="$2"
}

create() {
  local flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$TPU_VERSION")
  if [[ $SPOT == 1 ]]; then flags+=(--spot); fi
  tpu create "$TPU_NAME" "${flags[@]}"
}

setup() {
  local tarball="${TMPDIR:-/tmp}/mcjax-$$.tar.gz"
  do_it git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$tarball" HEAD
  tpu scp "$tarball" "$TPU_NAME:mcjax.tar.gz" --worker=all
  do_it rm -f "$tarball"
  on_workers all "set -ex; rm -rf $REMOTE_DIR; mkdir -p $REMOTE_DIR
    tar -xzf mcjax.tar.gz -C $REMOTE_DIR; cd $REMOTE_DIR
    python3 -m pip install --user -q uv
    ~/.local/bin/uv venv --python $PYTHON_VERSION .venv
    ~/.local/bin/uv pip install --python .venv/bin/python -e . 'jax[tpu]'"
  if [[ -n $NFS ]]; then
    on_workers all "set -ex; sudo apt-get -qq update; sudo apt-get -qq install -y nfs-common
      sudo mkdir -p $MOUNT; mountpoint -q $MOUNT || sudo mount -t nfs $NFS $MOUNT
      sudo chmod a+rwx $MOUNT"
  fi
}

run_job() {
  local script remote
  # Each worker: python in the background, immune to the ssh session ending; its exit
  # status goes to mcjax.status and its pid to mcjax.pid (for 'logs').
  script=".venv/bin/python -m mcjax.main --distributed=on \"\$@\"; echo \$? > mcjax.status"
  remote="set -e; cd $REMOTE_DIR; rm -f mcjax.status
    nohup bash -c $(printf '%q' "$script") mcjax $(printf '%q ' "$@") \
      > mcjax.log 2>&1 < /dev/null &
    echo \$! > mcjax.pid; echo \"worker started pid \$!\""
  on_workers all "$remote"
}

logs() {
  on_workers 0 "cd $REMOTE_DIR; tail -n +1 -f --pid=\"\$(cat mcjax.pid)\" mcjax.log
    status=\$(cat mcjax.status 2>/dev/null || echo 1); echo \"exit status \$status\"
    exit \"\$status\""
}

stop() {  # the wrapper's child is python
  on_workers all "pkill -TERM -P \"\$(cat $REMOTE_DIR/mcjax.pid)\" || echo 'not running'"
}

check_args() {
  [[ $# -ge 1 ]] || usage
  if [[ " $* " != *" --workdir $MOUNT/"* && " $* " != *" --workdir=$MOUNT/"* ]]; then
    echo "warning: no '--workdir $MOUNT/...': with several workers each would write its" \
      "own disk, which breaks checkpoints (see NFS in '$0' without arguments)" >&2
  fi
}

delete() {
  tpu delete "$TPU_NAME" --quiet
}

case "${1:-}" in
  create | setup | logs | stop | delete)
    [[ $# == 1 ]] || usage
    "$1"
    ;;
  run)
    shift
    check_args "$@"
    run_job "$@"
    ;;
  all)
    shift
    check_args "$@"
    if [[ $KEEP != 1 ]]; then trap delete EXIT; fi
    create
    setup
    run_job "$@"
    logs
    ;;
  *) usage ;;
esac
