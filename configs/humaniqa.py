"""The paper's recipe (method.md sections 4-5): two-pass GRPO from the stage-A score checkpoint.

Each setting and where it comes from (the paper, or the authors' trainer where it is silent):
* rewards: score + self-consistency + reasoning, equal weights (method.md 4.3), cosine closeness
  with threshold 0.35 (their hard-coded value, 8.5), ROUGE-1 precision of the whole completion
  floored at 0.1 (4.3, 8.2); ratings read with their strict regex, so a completion cut before
  `</answer>` earns 0 (8.7; `RewardsSection`'s defaults). The human text is joined with spaces;
  their separator-less join is `--set rewards.params.reasoning.join=authors` (8.6);
* rollout: G = 4 samples per prompt, up to 1024 new tokens in pass 1 and in pass 2 (both of their
  GenerationConfigs), pass 2 on the caption alone (text before `<think>`, 3);
* pass-2 caption budget 384 tokens (`max_caption_tokens`): the longest caption the policy may
  produce and pass 2 takes (the paper's captions run ~100-300 tokens; a longer one is treated as
  missing, reward 0), so pass-2 prompts are ~450 tokens instead of pass 1's 1024-token budget;
  they are prefilled at the smallest of 128 / 256 / the full width that holds the batch's longest;
* sampling, both passes: temperature 1, top-k 50, top-p 1. Their trainer builds
  `GenerationConfig(max_new_tokens, do_sample=True, temperature=1, pad_token_id)`, which leaves
  transformers' default top_k=50 in place (transformers 4.51.3, their pin). That version also
  replaces any field equal to its global default by the checkpoint's own generation_config.json
  value when the checkpoint was saved by transformers >= 4.50 (`_prepare_generation_config`); for
  Qwen2.5-VL-Instruct that file holds temperature 1e-6 (or 0.1, top_k 1 in older copies) and
  repetition_penalty 1.05, i.e. near-greedy rollouts whose G samples agree and whose group
  advantages vanish. The paper's learning curves rule that out for their runs, so the recipe takes
  the values their code states, with transformers' top_k default;
* GRPO (5): beta = 1e-3 (k3 against the start checkpoint), clip 0.2, one update per rollout,
  sequence mean of token means, std-normalised group advantages with eps 1e-4;
* optimizer (5): AdamW lr 1e-6 with linear decay, no warm-up, weight decay 0, grad-norm clip 1;
  vision tower frozen;
* batch (5): 64 prompts x 4 samples per optimizer step over ALL processes
  (`data.global_batch_size`), 2 epochs over the KonIQ-10k training list (Q-Reasoning's
  `mixed_cot.json`: 7,058 prompts, 482 with human text): 220 steps on any number of hosts;
* precision (8.9): their DeepSpeed ZeRO-3 `--bf16` keeps float32 master weights and AdamW moments
  and computes in bfloat16; so does this recipe (`param_dtype=float32`, `dtype=bfloat16`). Memory:
  `jaxbiqa plan qwen2.5-vl-7b --config humaniqa --hardware 8xh100-80gb` (README's table).

Paths (relative to the working directory): the stage-A policy that `configs/qinsight_score.py`
writes (`runs/qinsight_score/policy`, a Hugging Face Qwen2.5-VL-7B folder), the Q-Reasoning files
and the KonIQ-10k images and labels. `optim.micro_batch_size` counts rows per accumulation step.
"""

from jaxbiqa.config import (
    CheckpointSection, Config, DataSection, GRPOSection, ModelSection, OptimSection, RewardsSection, RolloutSection,
    SFTSection, SamplingSection)

NEW_TOKENS = 1024
TOP_K = 50  # transformers' GenerationConfig default, which the authors' generate call kept
CAPTION_TOKENS = 384  # the longest caption the policy may produce (pass 2's prompt width follows it)


def get_config() -> Config:
    return Config(
        name="humaniqa",
        output_dir="runs/humaniqa",
        model=ModelSection(path="runs/qinsight_score/policy", param_dtype="float32", dtype="bfloat16", remat=True,
                           scan_layers=True),
        data=DataSection(train=("qreasoning:data/q_reasoning/mixed_cot.json",), eval=("koniq:data/koniq10k",),
                         image_root="data/koniq10k/512x384", train_split="train", eval_split="test",
                         global_batch_size=64, num_epochs=2, num_workers=4),
        rollout=RolloutSection(
            pass1=SamplingSection(max_new_tokens=NEW_TOKENS, num_samples=4, temperature=1.0, top_k=TOP_K,
                                 stop_strings=("</answer>",), prompt_buckets=(320, 384, 512)),
            pass2=SamplingSection(max_new_tokens=NEW_TOKENS, num_samples=1, temperature=1.0, top_k=TOP_K,
                                 stop_strings=("</answer>",), prompt_buckets=(128, 256)),
            caption_until="think", max_caption_tokens=CAPTION_TOKENS),
        rewards=RewardsSection(),
        grpo=GRPOSection(beta=1e-3, kl_estimator="k3", clip_epsilon=0.2, aggregation="seq_mean_token_mean",
                         num_iterations=1),
        optim=OptimSection(learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0, schedule="linear",
                           warmup_steps=0, micro_batch_size=16, freeze_vision=True),
        sft=SFTSection(steps=0),
        checkpoint=CheckpointSection(save_interval_steps=50, max_to_keep=3),
    )
