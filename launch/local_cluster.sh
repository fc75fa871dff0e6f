#!/usr/bin/env bash
# N JAX processes on this machine, each with M simulated CPU devices, joined through the real
# jax.distributed runtime (gloo CPU collectives): the test bed of every multi-host code path.
#
#   launch/local_cluster.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [-t SECONDS] [--dry-run] -- COMMAND...
#
# Each process runs COMMAND with JAXBIQA_COORDINATOR=127.0.0.1:PORT, JAXBIQA_NUM_PROCESSES=N,
# JAXBIQA_PROCESS_ID=i (read by jaxbiqa.distributed.initialize), JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=M; its output lines are prefixed "[i] ".
# The script waits for all of them; when one fails (or the time limit -t passes) it stops the
# others and exits with that status. PORT defaults to a free port. --dry-run prints the N command
# lines and runs nothing.
#
#   launch/local_cluster.sh -n 2 -d 4 -- jaxbiqa train --config demo_cpu
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

processes=2
devices=4
port=""
limit=0
dry_run=0
while (($#)); do
  case "$1" in
    -n|--processes) processes="${2:?-n needs a value}"; shift 2 ;;
    -d|--devices) devices="${2:?-d needs a value}"; shift 2 ;;
    -p|--port) port="${2:?-p needs a value}"; shift 2 ;;
    -t|--timeout) limit="${2:?-t needs a value}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local_cluster.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || { echo "local_cluster.sh: no command given after --" >&2; usage; }
for value in "$processes" "$devices" "$limit" ${port:+"$port"}; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "local_cluster.sh: '$value' is not a non-negative integer" >&2; exit 2; }
done
((processes >= 1 && devices >= 1)) || { echo "local_cluster.sh: -n and -d must be >= 1" >&2; exit 2; }

if [[ -z "$port" ]]; then
  if ((dry_run)); then
    port=PORT
  else
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
fi
# keep the caller's XLA flags, but the device count is ours
xla_flags="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g; s/^ +| +$//g')"
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices"

process_env() {  # the environment of process $1, as NAME=value words
  printf '%s\n' "JAXBIQA_COORDINATOR=127.0.0.1:$port" "JAXBIQA_NUM_PROCESSES=$processes" \
    "JAXBIQA_PROCESS_ID=$1" "JAX_PLATFORMS=cpu" "XLA_FLAGS=$xla_flags"
}


if ((dry_run)); then
  for ((i = 0; i < processes; i++)); do
    mapfile -t vars < <(process_env "$i")
    quote env "${vars[@]}" "$@"
  done
  exit 0
fi

pids=()
stop_all() {  # TERM each process group, then KILL what is left
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < processes; i++)); do
  mapfile -t vars < <(process_env "$i")
  # setsid: each process leads its own group, so stopping it also stops what it started
  env "${vars[@]}" setsid "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done

# poll rather than `wait -n`, so that the time limit is checked while all are still running
status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    code=0
    wait "$pid" || code=$?
    if ((code != 0)); then
      echo "local_cluster.sh: process $pid exited with status $code; stopping the others" >&2
      status=$code
      break 2
    fi
  done
  running=("${still[@]}")
  if ((limit > 0 && SECONDS >= limit && ${#running[@]})); then
    echo "local_cluster.sh: time limit of ${limit}s reached; stopping all processes" >&2
    status=124
    break
  fi
  sleep 0.2
done
((status == 0)) || stop_all
wait 2>/dev/null || true
exit "$status"
