#!/usr/bin/env bash
# Run a command on one host with N GPUs: one process drives all of them.
#
#   launch/gpu_node.sh [--gpus N] [--cache-dir DIR] [--mem-fraction F] [--dry-run] -- COMMAND...
#
#   --gpus N           use GPUs 0 .. N-1 (CUDA_VISIBLE_DEVICES); default: every visible GPU
#   --cache-dir DIR    persistent compilation cache (default ~/.cache/jaxbiqa/jax)
#   --mem-fraction F   share of each GPU's memory JAX may take (XLA_PYTHON_CLIENT_MEM_FRACTION,
#                      default 0.95; JAX's own default of 0.75 wastes a quarter of the card)
#   --dry-run          print the command line and run nothing
#
# One process per host: JAX's single controller sees the host's GPUs as one mesh, so no
# coordinator is needed and the same program runs unchanged on 1 GPU or 8. (One process per GPU
# would only add start-up and a coordinator; for several hosts use launch/slurm.sbatch, which
# keeps one process per host.) The mesh comes from the config (runtime.mesh, default all FSDP).
#
#   launch/gpu_node.sh --gpus 8 -- jaxbiqa train --config humaniqa
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

gpus="" cache_dir="$HOME/.cache/jaxbiqa/jax" mem_fraction=0.95 dry_run=0
while (($#)); do
  case "$1" in
    --gpus) gpus="${2:?}"; shift 2 ;;
    --cache-dir) cache_dir="${2:?}"; shift 2 ;;
    --mem-fraction) mem_fraction="${2:?}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "gpu_node.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || die "no command given after --"
[[ -z "$gpus" || "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$gpus'"
[[ "$mem_fraction" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem-fraction must be in (0, 1], got '$mem_fraction'"


vars=("XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction" "JAX_COMPILATION_CACHE_DIR=$cache_dir")
[[ -z "$gpus" ]] || vars=("CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))" "${vars[@]}")
if ((dry_run)); then
  quote env "${vars[@]}" "$@"
  exit 0
fi
exec env "${vars[@]}" "$@"
