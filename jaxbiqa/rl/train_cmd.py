"""`jaxbiqa train`: the warm start and two-pass GRPO of a recipe, into its output directory.

    jaxbiqa train --config demo_cpu [--set key=value ...] [--resume | --resume-step N]
    launch/local_cluster.sh -n 2 -d 4 -- jaxbiqa train --config demo_cpu   # 2 processes x 4 CPU devices

The mesh is `runtime.mesh` (and `runtime.dcn_mesh`); under a launcher (`launch/`) every process
runs this command and the multi-process runtime starts from the environment.
`data.global_batch_size` (like `train.sft_batch_size` and `eval.batch_size`) counts records
per step over all processes: the same config takes the same steps on 1 process or N.

Writes under `output_dir`: `config.json` (the resolved config), `checkpoints/`, `train_log.jsonl`,
`tensorboard/`, `samples.log`, `policy/` (a Hugging Face checkpoint of the trained policy),
`eval/<stage>/predictions.jsonl` and `summary.json`. Exit status: 0 when done, 2 for a user error
(a bad config, bad data, an unwritable path, a run of skipped updates: one line, `jaxbiqa.cli`), 75
when stopped by SIGTERM or Ctrl-C after saving a checkpoint (run again with `--resume`; Ctrl-C twice
stops at once, unsaved). `output_dir` may be a bucket (`gs://...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jaxbiqa.config import load_config
from jaxbiqa.config_cmd import add_config_arguments
from jaxbiqa.demo_assets import resolve_demo_model

PREEMPTED = 75  # EX_TEMPFAIL: try again (with --resume)


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in the output directory (one that cannot be "
                             "read is set aside and the one before it used)")
    parser.add_argument("--resume-step", type=int, default=None, metavar="N",
                        help="continue from the checkpoint of step N; later checkpoints are set aside "
                             "(renamed <step>.superseded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; warnings only")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax reports every file it writes at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'" on CPU
    config = resolve_demo_model(load_config(args.config, args.overrides))
    from jaxbiqa.rl.trainer import Trainer

    train = config.train
    if args.quiet:
        import dataclasses

        train = dataclasses.replace(train, progress=False)
    trainer = Trainer.from_runtime(config, train=train)  # the mesh of config.runtime, on every process
    result = trainer.run(resume=args.resume or args.resume_step is not None, resume_step=args.resume_step)
    if result.preempted:
        print(f"stopped by a signal at step {result.step}, checkpoint saved; continue with --resume",
              file=sys.stderr)
        return PREEMPTED
    final = result.eval.get("final")
    summary = {"step": result.step, "output_dir": config.output_dir, "policy": result.policy_dir}
    if final:
        summary["eval"] = {"n": final["n"], "srcc": final["image"]["srcc"], "plcc": final["image"]["plcc"],
                           **({"caption_srcc": final["caption"]["srcc"], "caption_plcc": final["caption"]["plcc"]}
                              if "caption" in final else {})}
    if trainer.main_process:  # one summary line for the run, not one per process
        print(json.dumps(summary))
    return 0
