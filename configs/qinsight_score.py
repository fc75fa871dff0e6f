"""Stage A, the Q-Insight score recipe (method.md section 6): threshold score + think/answer format."""

from jaxbiqa.config import Config, RewardsSection


def get_config() -> Config:
    return Config(
        name="qinsight_score",
        output_dir="runs/qinsight_score",
        rewards=RewardsSection(
            weights={"score": 1.0, "qinsight_format": 1.0},
            params={"score": {"kind": "threshold", "threshold": 0.35}, "qinsight_format": {"value": 1.0}},
        ),
    )
