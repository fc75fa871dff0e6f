"""VisualQuality-R1 (method.md section 6): single-pass GRPO with the Thurstone ranking (fidelity) reward.

Each sample's rating is compared with every other image of the batch (so a batch needs several
images), plus the think/answer format reward; G = 6, beta = 0.04, lr 1e-6 with linear decay,
from Qwen2.5-VL-7B-Instruct. Trained here on the KonIQ-10k training split (the original used
KADID-10K; any `data.train` spec works, e.g. `--set data.train=kadid:data/kadid10k` with a split file).
Precision: float32 master weights and AdamW moments under bfloat16 compute (a bfloat16 weight
cannot take a 1e-6 update). Sampling: T = 1 over the full vocabulary (not traced to their code).
"""

from jaxbiqa.config import (
    CheckpointSection, Config, DataSection, GRPOSection, ModelSection, OptimSection, RewardsSection, RolloutSection,
    SFTSection, SamplingSection)

NEW_TOKENS = 1024


def get_config() -> Config:
    return Config(
        name="visualquality_r1",
        output_dir="runs/visualquality_r1",
        model=ModelSection(path="models/Qwen2.5-VL-7B-Instruct", param_dtype="float32", dtype="bfloat16",
                           remat=True, scan_layers=True),
        data=DataSection(train=("koniq:data/koniq10k",), eval=("koniq:data/koniq10k",), train_split="train",
                         eval_split="test", global_batch_size=16, num_epochs=1, num_workers=4),
        rollout=RolloutSection(
            pass1=SamplingSection(max_new_tokens=NEW_TOKENS, num_samples=6, temperature=1.0,
                                 stop_strings=("</answer>",), prompt_buckets=(320, 384, 512)),
            two_pass=False),
        rewards=RewardsSection(weights={"ranking": 1.0, "qinsight_format": 1.0}, params={}),
        grpo=GRPOSection(beta=0.04),
        optim=OptimSection(learning_rate=1e-6, schedule="linear", micro_batch_size=16, freeze_vision=True),
        sft=SFTSection(steps=0),
        checkpoint=CheckpointSection(save_interval_steps=100, max_to_keep=3),
    )
