"""The paper's recipe (method.md sections 4-5): two-pass GRPO from the stage-A score checkpoint.

Rewards score + self-consistency + reasoning (equal weights, cosine closeness with threshold
0.35, ROUGE-1 precision floored at 0.1); G = 4, beta = 1e-3 (k3 against the start checkpoint),
clip 0.2, one update per rollout; AdamW lr 1e-6 with linear decay, no warm-up, grad-norm clip 1;
64 prompts x 4 samples per step, 2 epochs over the KonIQ-10k training list (Q-Reasoning's
`mixed_cot.json`: 7,058 prompts, 482 with human text); up to 1024 new tokens, T = 1.

Paths (relative to the working directory): the stage-A policy that `configs/qinsight_score.py`
writes (`runs/qinsight_score/policy`, a Hugging Face Qwen2.5-VL-7B folder), the Q-Reasoning files
and the KonIQ-10k images and labels. Sized for one host with 8 accelerators (`data.batch_size`
counts prompts per process; `optim.micro_batch_size` rows per accumulation step).
"""

from jaxbiqa.config import Config, ModelSection, RewardsSection
from jaxbiqa.data.options import DataSection
from jaxbiqa.rl.options import CheckpointSection, GRPOSection, OptimSection, SFTSection
from jaxbiqa.rollout.options import RolloutConfig, SamplingConfig

NEW_TOKENS = 1024


def get_config() -> Config:
    return Config(
        name="humaniqa",
        output_dir="runs/humaniqa",
        model=ModelSection(path="runs/qinsight_score/policy", param_dtype="bfloat16", dtype="bfloat16", remat=True,
                           scan_layers=True),
        data=DataSection(train=("qreasoning:data/q_reasoning/mixed_cot.json",), eval=("koniq:data/koniq10k",),
                         image_root="data/koniq10k/512x384", train_split="train", eval_split="test",
                         batch_size=64, num_epochs=2, num_workers=4),
        rollout=RolloutConfig(
            pass1=SamplingConfig(max_new_tokens=NEW_TOKENS, num_samples=4, temperature=1.0,
                                 stop_strings=("</answer>",), prompt_buckets=(320, 384, 512)),
            pass2=SamplingConfig(max_new_tokens=NEW_TOKENS, num_samples=1, temperature=1.0,
                                 stop_strings=("</answer>",), prompt_buckets=(256, 512, 768, 1024, 1536)),
            caption_until="think"),
        rewards=RewardsSection(),
        grpo=GRPOSection(num_generations=4, beta=1e-3, kl_estimator="k3", clip_epsilon=0.2,
                         aggregation="seq_mean_token_mean", max_completion_length=NEW_TOKENS, num_iterations=1),
        optim=OptimSection(learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0, schedule="linear",
                           warmup_steps=0, micro_batch_size=16, freeze_vision=True),
        sft=SFTSection(steps=0),
        checkpoint=CheckpointSection(save_interval_steps=50, max_to_keep=3),
    )
