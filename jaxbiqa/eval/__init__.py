"""Evaluation: IQA metrics, prediction files, caption-to-human alignment.

`SAMPLES_DIR` holds small made-up prediction files in the authors' released layout (model_a,
model_b) and a Q-Reasoning-style human file, for demos and tests:
`jaxbiqa eval-predictions <SAMPLES_DIR>/model_a --human <SAMPLES_DIR>/human.json`.
"""

from pathlib import Path

SAMPLES_DIR = Path(__file__).with_name("samples")
