"""Q-Insight degradation reward: JSON keys, text fallback, strict mode."""

import numpy as np
import pytest

from jaxbiqa.rewards.degradation import degradation_reward, parse_degradation


def js(cls: str, sev: str) -> str:
    return f'<think>t</think><answer>{{"distortion_class": "{cls}", "severity": "{sev}"}}</answer>'


def run(texts, classes, severities, **kw):
    out = degradation_reward(**kw)(texts, {"distortion": classes, "severity": severities})
    assert out.dtype == np.float32 and out.shape == (len(texts),)
    return out.tolist()


def test_json_answers() -> None:
    texts = [js("blur", "moderate"), js("blur", "moderate"), js("blur", "moderate"), js("Blur", "MODERATE")]
    got = run(texts, ["blur", "blur", "noise", "blur"], ["moderate", "serious", "moderate", "moderate"])
    assert got == [1.0, 0.25, 0.0, 1.0]


def test_severity_counts_only_with_the_right_class() -> None:
    assert run([js("noise", "slight")], ["darken"], ["slight"]) == [0.0]


def test_no_distortion() -> None:
    texts = [js("null", "null"), '<answer>{"distortion_class": null, "severity": null}</answer>', js("blur", "slight")]
    assert run(texts, [None, "null", None], ["", None, None]) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("<answer>The image looks slightly noisy.</answer>", ("noise", "slight")),
        ("<answer>obvious JPEG blocking</answer>", ("compression", "obvious")),
        ("<answer>distortion: blurry, level = serious</answer>", ("blur", "serious")),
        ("<think>maybe noise</think><answer>Catastrophic underexposure 🌑</answer>", ("darken", "catastrophic")),
        ('{"distortion_class": "blur", "severity": "moderate"}', ("blur", "moderate")),  # no answer tag
        ("<answer>Distortion: the picture is blurred</answer>", ("blur", None)),  # unknown keyed value -> words
        ("<answer>画像はきれいです</answer>", (None, None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_tolerant_parse(text: object, parsed: tuple) -> None:
    assert parse_degradation(text) == parsed


def test_strict_mode_uses_the_qinsight_regex_only() -> None:
    bare_json = '{"distortion_class": "blur", "severity": "moderate"}'
    texts = [js("blur", "moderate"), "<answer>moderate blur</answer>", bare_json]
    assert run(texts, ["blur"] * 3, ["moderate"] * 3, strict=True) == [1.0, 0.0, 0.0]
    assert run(texts, ["blur"] * 3, ["moderate"] * 3) == [1.0, 1.0, 1.0]


def test_values_and_errors() -> None:
    assert run([js("blur", "slight")], ["blur"], ["slight"], class_value=0.5, severity_value=0.5) == [1.0]
    with pytest.raises(ValueError, match=r"'distortion'\[1\] = 'haze' is not one of"):
        run([js("blur", "slight")] * 2, ["blur", "haze"], ["slight", "slight"])
    with pytest.raises(KeyError, match="severity"):
        degradation_reward()(["x"], {"distortion": ["blur"]})
