"""VisualQuality-R1 (method.md section 6): Thurstone ranking (fidelity) reward + think/answer format."""

from jaxbiqa.config import Config, RewardsSection


def get_config() -> Config:
    return Config(
        name="visualquality_r1",
        output_dir="runs/visualquality_r1",
        rewards=RewardsSection(weights={"ranking": 1.0, "qinsight_format": 1.0}, params={}),
    )
