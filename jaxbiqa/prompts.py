"""The method's prompts, byte-exact (method.md section 3), in one place.

The odd spacing in the pass-1 system prompt ("logics.First", "Second  thinks") is the authors'
and is kept: released checkpoints were trained on exactly these bytes. Configs choose a prompt set
by name from `PROMPT_SETS` (`data.prompts`).
"""

from __future__ import annotations

import dataclasses

PASS1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant follows a human thinking logics.First describes the low-level visual contents (including the "
    "blur, noise, compression, darken or others) of the image, mainly focus on three aspects including the main "
    "subject of this image (why human takes this picture), the advantage of this image (what makes this image "
    "looks good) and the flaws (what makes the image looks bad). Second  thinks about the reasoning process in the "
    "mind and then provides the user with the answer. The description, reasoning and answer are enclosed within "
    "<caption></caption> <think> </think> and <answer> </answer> tags, respectively, i.e., <caption>description "
    "here</caption><think> reasoning process here </think><answer> answer here </answer>."
)

# The standard R1 system prompt (no trailing full stop, as in the original).
R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>"
)

RATING_FORMAT = (
    "The rating should be a float between 1 and 5, rounded to two decimal places, with 1 representing very poor "
    "quality and 5 representing excellent quality. The final answer in JSON format with the following keys: "
    '"rating": The score.'
)

PASS1_QUESTION = "What is your overall rating on the quality of this picture? " + RATING_FORMAT

# The authors substitute this literal with the pass-1 caption.
CAPTION_PLACEHOLDER = "image_place_holder"
PASS2_QUESTION = (
    f"If there is an image described as {CAPTION_PLACEHOLDER}, what is your overall rating on the quality of this "
    "picture? " + RATING_FORMAT
)


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """System prompts and user questions of the image pass (1) and the caption-only pass (2)."""

    pass1_system: str = PASS1_SYSTEM
    pass1_question: str = PASS1_QUESTION
    pass2_system: str = R1_SYSTEM
    pass2_question: str = PASS2_QUESTION  # must contain CAPTION_PLACEHOLDER once

    def __post_init__(self):
        if self.pass2_question.count(CAPTION_PLACEHOLDER) != 1:
            raise ValueError(f"pass2_question must contain {CAPTION_PLACEHOLDER!r} exactly once: "
                             f"{self.pass2_question!r}")

    def pass2_user(self, caption: str) -> str:
        """The pass-2 user turn for one caption."""
        return self.pass2_question.replace(CAPTION_PLACEHOLDER, caption)


PROMPT_SETS: dict[str, PromptSet] = {
    "humaniqa": PromptSet(),  # the method (two passes: image -> caption/think/answer, caption -> think/answer)
}


def prompt_set(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise KeyError(f"unknown prompt set {name!r}; known: {sorted(PROMPT_SETS)}")
    return PROMPT_SETS[name]
