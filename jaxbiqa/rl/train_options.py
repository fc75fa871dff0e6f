"""Options of the training loop (`jaxbiqa.rl.trainer`): run length, the two passes' roles, logging
and the final evaluation. A plain frozen dataclass with no heavy imports, for the global config
(`Config.train`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainSection:
    # run length: GRPO steps (one rollout each) are the train split's batches x data.num_epochs,
    # capped at max_steps when it is > 0 (required when data.num_epochs is None)
    max_steps: int = 0
    sft_batch_size: int = 0          # records per warm-start step over all processes; 0 = data.global_batch_size
    # with a two-pass rollout, the warm start also teaches pass 2 (caption-only prompt -> the
    # reference's think + answer): a model trained from scratch cannot do pass 2 otherwise
    sft_pass2: bool = True
    # GRPO: also train the pass-2 completions, each with its pass-1 sample's advantage
    # (the paper does not: pass 2 only produces the self-consistency reward)
    train_pass2: bool = False

    # logging (JSON lines every step; TensorBoard when tensorboardX is installed)
    log_every: int = 1               # steps between JSON-lines / TensorBoard records
    samples_every: int = 25          # steps between sample completions written to samples.log (0: never)
    samples_per_log: int = 2         # prompts shown each time (all G samples of each)
    tensorboard: bool = True
    progress: bool = True            # a tqdm progress bar with ETA on stderr

    # evaluation (greedy rollout on data.eval / data.eval_split) at the end, and after the warm start
    eval_at_end: bool = True
    eval_after_sft: bool = True
    eval_batch_size: int = 0         # records per evaluation batch (global); 0 = data.global_batch_size
    eval_max_examples: int = 0       # 0: the whole eval split

    def __post_init__(self):
        for name in ("max_steps", "sft_batch_size", "samples_every", "samples_per_log", "eval_batch_size",
                     "eval_max_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
