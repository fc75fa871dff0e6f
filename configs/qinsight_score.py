"""Stage A, the Q-Insight score recipe (method.md section 6): single-pass GRPO from Qwen2.5-VL-7B-Instruct.

Reward: 1 when |rating - mos_norm| < 0.35 (threshold score) plus 1 for the think/answer layout;
G = 8, beta = 1e-3, lr 1e-6, 10 epochs over the KonIQ-10k training split, 256 new tokens. Its
`policy/` output is the start checkpoint of `configs/humaniqa.py`. The prompts are jaxbiqa's
pass-1 prompts (the method's; Q-Insight's own wording differs).

Precision: float32 master weights and AdamW moments, bfloat16 compute (DeepSpeed ZeRO-3 `--bf16`,
as the Q-Insight / VLM-R1 trainers run). Ratings: the strict `<answer>` regex of their reward
code (`strict=True`, no range check). Sampling: T = 1 with transformers' default top-k 50, which
their `GenerationConfig(max_new_tokens, do_sample=True, temperature=1, ...)` keeps (see
`configs/humaniqa.py` on how transformers >= 4.50 could swap in the checkpoint's defaults).

Paths: the Qwen2.5-VL-7B-Instruct folder (config.json, safetensors, tokenizer, preprocessor) and
the KonIQ-10k root (labels CSV, `koniq10k_distributions_sets.csv`, `512x384/`).
"""

from jaxbiqa.config import (
    CheckpointSection, Config, DataSection, GRPOSection, ModelSection, OptimSection, RewardsSection, RolloutSection,
    SFTSection, SamplingSection)

NEW_TOKENS = 256


def get_config() -> Config:
    return Config(
        name="qinsight_score",
        output_dir="runs/qinsight_score",
        model=ModelSection(path="models/Qwen2.5-VL-7B-Instruct", param_dtype="float32", dtype="bfloat16",
                           remat=True, scan_layers=True),
        data=DataSection(train=("koniq:data/koniq10k",), eval=("koniq:data/koniq10k",), train_split="train",
                         eval_split="test", global_batch_size=32, num_epochs=10, num_workers=4),
        rollout=RolloutSection(
            pass1=SamplingSection(max_new_tokens=NEW_TOKENS, num_samples=8, temperature=1.0, top_k=50,
                                 stop_strings=("</answer>",), prompt_buckets=(320, 384, 512)),
            two_pass=False),
        rewards=RewardsSection(
            weights={"score": 1.0, "qinsight_format": 1.0},
            params={"score": {"kind": "threshold", "threshold": 0.35, "strict": True, "valid_range": None},
                    "qinsight_format": {"value": 1.0}},
        ),
        grpo=GRPOSection(beta=1e-3),
        optim=OptimSection(learning_rate=1e-6, schedule="linear", micro_batch_size=32, freeze_vision=True),
        sft=SFTSection(steps=0),
        checkpoint=CheckpointSection(save_interval_steps=100, max_to_keep=3),
    )
