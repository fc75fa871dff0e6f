"""Format rewards: the method's caption/think/answer layout and Q-Insight's think/answer layout."""

import numpy as np
import pytest

from jaxbiqa.rewards.format import format_reward, qinsight_format_reward

GOOD = (
    "<caption>\nA red flower, the assistant notes, fills the frame.\n</caption>\n\n"
    "<think>\nSharp and bright.\n</think>\n\n"
    '<answer>\n{\n  "rating": 4.12\n}\n</answer>'
)


def run(fn, texts):
    out = fn(texts, {})
    assert out.dtype == np.float32 and out.shape == (len(texts),)
    return out.tolist()


@pytest.mark.parametrize(
    ("text", "strict", "lenient"),
    [
        (GOOD, 0.5, 0.5),
        ("  " + GOOD + "\n", 0.5, 0.5),
        ('<caption>a</caption><think>b</think><answer>{"rating": 3}</answer>', 0.5, 0.5),
        (GOOD.replace("</caption>", ""), 0.0, 0.0),  # as in 3 released v13 completions
        (GOOD + " trailing words", 0.0, 0.5),
        ("preamble " + GOOD, 0.0, 0.5),
        (GOOD + '<answer>{"rating": 2}</answer>', 0.0, 0.5),  # a second answer block
        (GOOD.replace('"rating": 4.12', '"score": 4.12'), 0.0, 0.5),  # no parsable rating
        (GOOD.replace("4.12", "7"), 0.0, 0.5),  # rating out of range
        (GOOD.replace("A red flower, the assistant notes, fills the frame.", " "), 0.0, 0.5),  # blank caption
        ('<think>b</think><caption>a</caption><answer>{"rating": 3}</answer>', 0.0, 0.0),  # wrong order
        ("", 0.0, 0.0),
        ('<caption>赤い花 🌸</caption>\n<think>綺麗</think>\n<answer>{"rating": 3.5}</answer>', 0.5, 0.5),
    ],
)
def test_method_layout(text: str, strict: float, lenient: float) -> None:
    assert run(format_reward(), [text]) == [strict]
    assert run(format_reward(strict=False), [text]) == [lenient]


def test_no_split_on_assistant() -> None:
    """The authors split on "assistant" first (method.md 8.1); a well-formed completion without that
    word scores here, and one containing it (GOOD does) scores too."""
    plain = GOOD.replace("the assistant notes, ", "")
    assert "assistant" not in plain
    assert run(format_reward(), [plain, GOOD]) == [0.5, 0.5]


def test_value_tags_and_non_strings() -> None:
    assert run(format_reward(value=1.0), [GOOD, None]) == [1.0, 0.0]
    custom = '<look>x</look><verdict>{"rating": 2.5}</verdict>'
    assert run(format_reward(tags=("look", "verdict")), [custom, GOOD]) == [0.5, 0.0]
    with pytest.raises(ValueError, match="at least two"):
        format_reward(tags=("answer",))
    with pytest.raises(ValueError, match="at least two"):
        format_reward(tags="answer")
    with pytest.raises(ValueError, match="distinct"):
        format_reward(tags=("answer", "answer"))
    with pytest.raises(ValueError, match="word-like"):
        format_reward(tags=("think", "an swer"))


def test_qinsight_layout() -> None:
    good = '<think>\nLooks sharp.\n</think>\n<answer>\n{"rating": 3.2}\n</answer>'
    texts = [good, "<caption>c</caption>" + good, good.replace("3.2", "x"), "<think>a</think>"]
    assert run(qinsight_format_reward(), texts) == [1.0, 0.0, 0.0, 0.0]
    assert run(qinsight_format_reward(strict=False), texts) == [1.0, 1.0, 1.0, 0.0]
