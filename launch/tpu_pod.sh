#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU slice (or of several slices), with pre-emption recovery.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --type ACCELERATOR [options] [--dry-run] -- COMMAND...
#
#   --name NAME          TPU VM (or queued resource) name; with --slices K the nodes are NAME-0 .. NAME-(K-1)
#   --zone ZONE          e.g. us-east5-a (v5p), us-west4-a (v5e)
#   --type ACCELERATOR   e.g. v5p-32 (16 chips), v5litepod-64 (v5e, 64 chips)
#   --project PROJECT    gcloud project (default: gcloud's configured one)
#   --version RUNTIME    TPU software version (default: v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5e)
#   --queued             create through a queued resource (waits for capacity); implied by --slices > 1
#   --slices K           K slices joined over the data-centre network (multislice; set runtime.dcn_mesh)
#   --spot               spot capacity (cheaper, pre-emptible)
#   --src DIR            project to copy to the workers (default: this checkout) ...
#   --pip SPEC           ... or install jaxbiqa from a pip SPEC instead of copying
#   --skip-setup         the workers already have ~/jaxbiqa set up
#   --cache-dir DIR      persistent compilation cache (default ~/.cache/jaxbiqa/jax on each worker;
#                        a gs:// folder is shared by all workers and survives pre-emption)
#   --max-restarts K     after a pre-emption, recreate the TPU and rerun with --resume, K times (default 3)
#   --delete             delete the TPU when the command has finished
#   --dry-run            print the commands (one per line) for a TPU that does not exist yet; run nothing
#
# A TPU that exists already is reused (read-only status queries are not shown by --dry-run).
# COMMAND runs in ~/jaxbiqa inside its virtual environment, with JAXBIQA_DISTRIBUTED=on so that
# jaxbiqa.distributed joins the workers. Write outputs and checkpoints to gs:// so that a
# recreated TPU can resume from them:
#
#   launch/tpu_pod.sh --name biqa --zone us-east5-a --type v5p-32 --spot -- \
#       jaxbiqa train --config humaniqa --set output_dir=gs://BUCKET/humaniqa
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" type="" project="" version="" queued=0 slices=1 spot=0
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" pip_spec="" skip_setup=0
# shellcheck disable=SC2016  # $HOME is expanded on the workers
cache_dir='$HOME/.cache/jaxbiqa/jax' max_restarts=3 delete=0 dry_run=0
while (($#)); do
  case "$1" in
    --name) name="${2:?}"; shift 2 ;;
    --zone) zone="${2:?}"; shift 2 ;;
    --type) type="${2:?}"; shift 2 ;;
    --project) project="${2:?}"; shift 2 ;;
    --version) version="${2:?}"; shift 2 ;;
    --queued) queued=1; shift ;;
    --slices) slices="${2:?}"; shift 2 ;;
    --spot) spot=1; shift ;;
    --src) src="${2:?}"; shift 2 ;;
    --pip) pip_spec="${2:?}"; shift 2 ;;
    --skip-setup) skip_setup=1; shift ;;
    --cache-dir) cache_dir="${2:?}"; shift 2 ;;
    --max-restarts) max_restarts="${2:?}"; shift 2 ;;
    --delete) delete=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || die "no command given after --"
[[ -n "$name" && -n "$zone" && -n "$type" ]] || die "--name, --zone and --type are required"
[[ "$slices" =~ ^[1-9][0-9]*$ && "$max_restarts" =~ ^[0-9]+$ ]] || die "--slices must be >= 1, --max-restarts >= 0"
((slices == 1)) || queued=1
if [[ -z "$version" ]]; then
  case "$type" in
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    *) die "no default --version for --type $type; pass the TPU software version" ;;
  esac
fi

run() { if ((dry_run)); then quote "$@"; else "$@"; fi; }

where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")
nodes=("$name")
((slices == 1)) || mapfile -t nodes < <(for ((i = 0; i < slices; i++)); do echo "$name-$i"; done)
archive="${TMPDIR:-/tmp}/jaxbiqa-$name.tgz"

tpu_state() {  # READY, PREEMPTED, ... of every node (queued resource: its own state), or MISSING
  if ((queued)); then
    gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)' 2>/dev/null || echo MISSING
  else
    gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || echo MISSING
  fi
}

create() {
  local extra=()
  ((spot)) && extra+=(--spot)
  if ((queued)); then
    if ((slices == 1)); then extra+=(--node-id="$name"); else extra+=(--node-count="$slices" --node-prefix="$name"); fi
    run gcloud compute tpus queued-resources create "$name" "${where[@]}" --accelerator-type="$type" \
      --runtime-version="$version" "${extra[@]}"
    ((dry_run)) && return
    local state
    while state=$(tpu_state); [[ "$state" != ACTIVE ]]; do
      [[ "$state" != FAILED && "$state" != SUSPENDED ]] || { echo "tpu_pod.sh: queued resource $name is $state" >&2; exit 1; }
      echo "tpu_pod.sh: queued resource $name is ${state:-pending}; waiting" >&2
      sleep 60
    done
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$type" --version="$version" "${extra[@]}"
  fi
}

delete_tpu() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}

on_workers() {  # run one shell command on every worker of every node, the nodes in parallel
  local pids=() node status=0
  if ((dry_run)); then
    for node in "${nodes[@]}"; do quote gcloud compute tpus tpu-vm ssh "$node" "${where[@]}" --worker=all --command "$1"; done
    return 0
  fi
  for node in "${nodes[@]}"; do
    gcloud compute tpus tpu-vm ssh "$node" "${where[@]}" --worker=all --command "$1" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  return "$status"
}

setup() {
  ((skip_setup)) && return 0
  if [[ -n "$pip_spec" ]]; then
    on_workers "python3 -m venv ~/jaxbiqa/.venv && ~/jaxbiqa/.venv/bin/pip install -q $(quote "$pip_spec") 'jax[tpu]'"
    return
  fi
  run tar --exclude=.venv --exclude=.git --exclude=runs --exclude='*.egg-info' -czf "$archive" -C "$src" .
  local node
  for node in "${nodes[@]}"; do
    run gcloud compute tpus tpu-vm scp "$archive" "$node:jaxbiqa.tgz" "${where[@]}" --worker=all
  done
  on_workers "mkdir -p ~/jaxbiqa && tar -xzf ~/jaxbiqa.tgz -C ~/jaxbiqa && cd ~/jaxbiqa && python3 -m venv .venv && .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]'"
}

state=MISSING
((dry_run)) || state=$(tpu_state)
case "$state" in
  READY|ACTIVE) echo "tpu_pod.sh: reusing $name ($state)" >&2 ;;
  MISSING) create ;;
  *) die "$name exists in state $state; delete it or wait until it is READY" ;;
esac
setup

command=("$@")
for ((attempt = 0; ; attempt++)); do
  status=0
  on_workers "cd ~/jaxbiqa && export JAXBIQA_DISTRIBUTED=on JAX_COMPILATION_CACHE_DIR=$cache_dir && . .venv/bin/activate && $(quote "${command[@]}")" || status=$?
  ((status != 0 && !dry_run)) || break
  state=$(tpu_state)
  case "$state" in
    READY|ACTIVE) echo "tpu_pod.sh: the command failed with status $status on a healthy TPU" >&2; exit "$status" ;;
  esac
  ((attempt < max_restarts)) || { echo "tpu_pod.sh: $name is $state after $max_restarts restarts; giving up" >&2; exit "$status"; }
  echo "tpu_pod.sh: $name is $state (pre-empted?); recreating it and resuming" >&2
  [[ "$state" == MISSING ]] || delete_tpu
  create
  setup
  [[ " ${command[*]} " == *" --resume "* ]] || command+=(--resume)
done
((delete)) && delete_tpu
exit 0
