"""The two-pass rollout on a tiny random model with the toy vocabulary: the engine's one program
(pass-2 prompts spliced on device) and the host oracle (`host_pass2`) produce the same pass-1
samples, agree on which completions have a caption, build the same pass-2 prompts, and then sample
the same pass 2; several split points decode together and each equals its own one-split rollout."""

import dataclasses

import jax
import numpy as np
import pytest
from host_pass2 import host_rollout
from rollout_helpers import EOS, PAD, THINK, TOY_VOCAB, image_prompts, random_model, toy_decode, toy_encode

from jaxbiqa.models.qwen2_5_vl import text_positions
from jaxbiqa.rollout import Rollout, RolloutSection, SamplingSection
from jaxbiqa.rollout.batch import PromptBatch
from jaxbiqa.rollout.engine import bucket_widths, bucketed_prefill


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


def test_engine_and_host_oracle_agree(model, config):
    prompts_args = inputs()
    engine = rollout(config)
    length = engine.pass2_width
    key = jax.random.key(7)
    a = engine(model, engine.prepare(model, *prompts_args), key)
    tokens, texts, has_caption, ids, mask, second = host_rollout(engine, model, engine.prepare(model, *prompts_args),
                                                                 key, length)

    np.testing.assert_array_equal(a.pass1.tokens, tokens.tokens)
    assert a.pass1_texts == texts and len(a.pass1_texts) == 6
    np.testing.assert_array_equal(a.has_caption, has_caption)
    assert a.has_caption.any() and not a.has_caption.all()
    assert a.pass2_input_ids.shape == ids.shape == (6, length)
    same_prompt = (a.pass2_input_ids == ids).all(1)
    for r in range(6):
        text = toy_decode(a.pass2_input_ids[r][a.pass2_attention_mask[r] > 0])
        caption = a.pass1_texts[r].partition("<think>")[0] if a.has_caption[r] else ""
        assert text == render(caption) == toy_decode(ids[r][mask[r] > 0])
        if same_prompt[r]:
            np.testing.assert_array_equal(a.pass2.tokens[r], np.asarray(second.tokens)[r])
    assert same_prompt[a.has_caption].any()
    assert a.pass2_texts == [toy_decode(t[:n]) for t, n in zip(a.pass2.tokens, a.pass2.lengths)]


def test_split_points_decode_together(model, config):
    """Splits ("think", "answer") in one program: pass 1 as with one split, and each split's pass-2
    rows (greedy) those of the rollout with that split alone."""
    key = jax.random.key(7)
    both = Rollout(config, vocab=TOY_VOCAB, encode=toy_encode, decode=toy_decode, render=render,
                   splits=("think", "answer"))
    out = both(model, both.prepare(model, *inputs()), key)
    assert out.has_caption.shape == (12,) and len(out.pass2_texts) == 12
    for index, until in enumerate(both.splits):
        alone = Rollout(dataclasses.replace(config, caption_until=until), vocab=TOY_VOCAB, encode=toy_encode,
                        decode=toy_decode, render=render)
        single = alone(model, alone.prepare(model, *inputs()), key)
        assert single.pass1_texts == out.pass1_texts
        texts, has_caption = out.split_texts(index)
        np.testing.assert_array_equal(has_caption, single.has_caption)
        assert [t for t, ok in zip(texts, has_caption) if ok] == \
            [t for t, ok in zip(single.pass2_texts, single.has_caption) if ok]


def test_single_pass(model, config):
    single = rollout(dataclasses.replace(config, two_pass=False))
    out = single(model, single.prepare(model, *inputs()), jax.random.key(7))
    assert out.pass1.tokens.shape == (6, 20) and out.pass2 is None and out.has_caption is None


def test_pass2_prefills_its_bucket(model, config):
    """Pass 2 prefills the smallest bucket that holds its longest prompt (the cache index says which
    branch ran) and decodes the same tokens and log-probs as from the full width; the bucketed
    program compiles once."""
    key = jax.random.key(7)
    full = rollout(config)
    a = full(model, full.prepare(model, *inputs()), key)
    longest = int(a.pass2_attention_mask.sum(1).max())
    width = full.pass2_width
    assert longest < width - 1
    buckets = (longest - 1, longest, width - 1)
    prompts = PromptBatch(a.pass2_input_ids, a.pass2_attention_mask, text_positions(a.pass2_attention_mask),
                          np.zeros(len(a.pass2_input_ids), np.int32))
    prefilled = jax.jit(lambda p: bucketed_prefill(model, p, config.pass2, bucket_widths(buckets, width)))(prompts)
    assert int(prefilled.cache.index) == longest and prefilled.cache.k.shape[3] == width + config.pass2.max_new_tokens

    bucketed = rollout(dataclasses.replace(config, pass2=config.pass2.replace(prompt_buckets=buckets)))
    b = bucketed(model, bucketed.prepare(model, *inputs()), key)
    np.testing.assert_array_equal(b.pass2_input_ids, a.pass2_input_ids)
    np.testing.assert_array_equal(b.pass2.tokens, a.pass2.tokens)
    np.testing.assert_allclose(b.pass2.logprobs, a.pass2.logprobs, atol=1e-5)
    compiled = Rollout.compile_count()
    bucketed(model, bucketed.prepare(model, *inputs()), jax.random.key(8))
    assert Rollout.compile_count() == compiled
