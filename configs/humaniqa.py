"""The paper's recipe (method.md sections 4-5): score + self-consistency + reasoning rewards."""

from jaxbiqa.config import Config, RewardsSection


def get_config() -> Config:
    return Config(
        name="humaniqa",
        output_dir="runs/humaniqa",
        rewards=RewardsSection(
            weights={"score": 1.0, "self_consistency": 1.0, "reasoning": 1.0, "format": 0.0},
            score_kind="cosine",
            score_threshold=0.35,
            reasoning_metric="precision",
            reasoning_floor=0.1,
        ),
    )
