"""The two-pass rollout on a tiny random model with the toy vocabulary: the fused program (pass-2
prompts spliced on device) and the host reference path produce the same pass-1 samples, agree on
which completions have a caption, build the same pass-2 prompts, and then sample the same pass 2."""

import dataclasses

import jax
import numpy as np
import pytest
from rollout_helpers import EOS, PAD, THINK, TOY_VOCAB, image_prompts, random_model, toy_decode, toy_encode

from jaxbiqa.rollout import Rollout, RolloutSection, SamplingSection


def render(caption: str) -> str:
    return "Q: the image described as " + caption + ", rate it.\nA:"


def rollout(config: RolloutSection) -> Rollout:
    return Rollout(config, vocab=TOY_VOCAB, encode=toy_encode, decode=toy_decode, render=render)


@pytest.fixture(scope="module")
def model():
    """A random model that writes the toy <think> token often, so that some completions have a caption."""
    model = random_model(seed=1)
    kernel = model.lm_head.kernel
    kernel[...] = kernel[...].at[:, THINK].multiply(4.0)
    return model


@pytest.fixture(scope="module")
def config():
    # the shapes and pass-1 settings of test_sampler's group sampling: the compiled programs are shared
    pass1 = SamplingSection(max_new_tokens=20, num_samples=2, temperature=0.8, top_k=20, top_p=0.9,
                           eos_token_ids=(10_000,), pad_token_id=PAD, prompt_buckets=(24, 48))
    pass2 = SamplingSection(max_new_tokens=8, greedy=True, eos_token_ids=(EOS,), pad_token_id=PAD)
    return RolloutSection(pass1=pass1, pass2=pass2)


def inputs():
    return image_prompts(3, seed=4, image_rows=(0, 2))


def test_fused_and_host_paths_agree(model, config):
    prompts_args = inputs()
    fused = rollout(config)
    length = fused.tables.prompt_length(fused.max_caption)
    host = rollout(dataclasses.replace(config, fused=False, pass2=config.pass2.replace(prompt_buckets=(length,))))
    key = jax.random.key(7)
    a = fused(model, fused.prepare(model, *prompts_args), key)
    b = host(model, host.prepare(model, *prompts_args), key)

    np.testing.assert_array_equal(a.pass1.tokens, b.pass1.tokens)
    assert a.pass1_texts == b.pass1_texts and len(a.pass1_texts) == 6
    np.testing.assert_array_equal(a.has_caption, b.has_caption)
    assert a.has_caption.any() and not a.has_caption.all()
    assert a.pass2_input_ids.shape == b.pass2_input_ids.shape == (6, length)
    same_prompt = (a.pass2_input_ids == b.pass2_input_ids).all(1)
    for r in range(6):
        text = toy_decode(a.pass2_input_ids[r][a.pass2_attention_mask[r] > 0])
        caption = a.pass1_texts[r].partition("<think>")[0] if a.has_caption[r] else ""
        assert text == render(caption) == toy_decode(b.pass2_input_ids[r][b.pass2_attention_mask[r] > 0])
        if same_prompt[r]:
            np.testing.assert_array_equal(a.pass2.tokens[r], b.pass2.tokens[r])
    assert same_prompt[a.has_caption].any()
    assert a.pass2_texts == [toy_decode(t[:n]) for t, n in zip(a.pass2.tokens, a.pass2.lengths)]


def test_single_pass(model, config):
    single = rollout(dataclasses.replace(config, two_pass=False))
    out = single(model, single.prepare(model, *inputs()), jax.random.key(7))
    assert out.pass1.tokens.shape == (6, 20) and out.pass2 is None and out.has_caption is None
