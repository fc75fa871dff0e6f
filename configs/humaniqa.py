"""The paper's recipe (method.md sections 4-5): score + self-consistency + reasoning rewards."""

from jaxbiqa.config import Config, RewardsSection


def get_config() -> Config:
    return Config(name="humaniqa", output_dir="runs/humaniqa", rewards=RewardsSection())
