"""Probability scoring: the real offline Qwen tokenizer's level tokens, and scores equal to a direct
computation from the full-forward logits of a tiny random model with the real vocabulary size."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from jaxbiqa.eval.qalign import (
    QAlignPrompt, _qalign_step, level_token_ids, qalign_batch, qalign_scores, qalign_step, qalign_text)
from jaxbiqa.models.qwen2_5_vl import (
    ModelConfig, Qwen2_5_VLForConditionalGeneration, TextConfig, VisionConfig, prepare_inputs)
from jaxbiqa.processing import Processor, build_qwen2_5_tokenizer, load_tokenizer, make_image_processor

SIDE = 56  # 56x56 pixels = 4x4 patches = 4 image tokens with the pixel budget below


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> Processor:
    tokenizer = load_tokenizer(build_qwen2_5_tokenizer(tmp_path_factory.mktemp("qwen_tokenizer")))
    return Processor(tokenizer, make_image_processor(min_pixels=SIDE * SIDE, max_pixels=SIDE * SIDE))


@pytest.fixture(scope="module")
def model() -> Qwen2_5_VLForConditionalGeneration:
    """Real Qwen vocabulary and special ids, tiny widths; the LM head scaled up so the level
    probabilities are far from uniform and a wrong position or token shows up."""
    text = TextConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(1, 1, 2), rope_theta=10000.0)
    vision = VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                          window_size=56, fullatt_block_indexes=(0,))
    m = Qwen2_5_VLForConditionalGeneration(ModelConfig(text=text, vision=vision), rngs=nnx.Rngs(0))
    m.lm_head.kernel.set_value(m.lm_head.kernel[...] * 40.0)
    return m


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(n)]


def test_level_tokens_of_the_real_tokenizer(processor):
    tok = processor.tokenizer
    ids = level_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == [" excellent", " good", " fair", " poor", " bad"]
    # in context: the whole prompt followed by a level word ends with exactly that token
    text = qalign_text(processor, 4)
    base = tok.encode(text, add_special_tokens=False)
    for word, i in zip(QAlignPrompt().levels, ids):
        assert tok.encode(text + " " + word, add_special_tokens=False) == base + [int(i)]


def test_level_words_that_are_not_one_token_raise(processor):
    with pytest.raises(ValueError, match="'unwatchable' is not a single token"):
        level_token_ids(processor.tokenizer, QAlignPrompt(levels=("excellent", "good", "fair", "poor", "unwatchable")))
    with pytest.raises(ValueError, match="must not end in whitespace"):
        QAlignPrompt(answer_prefix="The quality is ")
    with pytest.raises(ValueError, match="one weight per level"):
        QAlignPrompt(weights=(5.0, 4.0, 3.0))


def test_prompt_text_is_the_documented_one(processor):
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>How would you rate the quality of this "
                "image?<|im_end|>\n<|im_start|>assistant\nThe quality of the image is")
    assert qalign_text(processor, 4) == expected
    custom = qalign_text(processor, 2, QAlignPrompt(system="Rate.", question="Quality?", answer_prefix="It is"))
    assert custom.startswith("<|im_start|>system\nRate.<|im_end|>\n")
    assert custom.endswith("Quality?<|im_end|>\n<|im_start|>assistant\nIt is")


def direct_scores(model, processor, imgs) -> tuple[np.ndarray, np.ndarray]:
    """Full [1, T, vocab] logits of each unpadded prompt; softmax over the level ids at the last position."""
    ids = level_token_ids(processor.tokenizer)
    probs = []
    for image in imgs:
        batch = qalign_batch(processor, [image])
        logits = np.asarray(model.forward(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                          batch["image_grid_thw"]), np.float64)
        level = logits[0, -1, ids]
        p = np.exp(level - level.max())
        probs.append(p / p.sum())
    probs = np.stack(probs)
    return probs @ np.array([5.0, 4.0, 3.0, 2.0, 1.0]), probs


def test_scores_equal_the_full_forward_computation(model, processor):
    imgs = images(3)
    expected, expected_probs = direct_scores(model, processor, imgs)
    # batch of 2: the second batch is padded with a copy; prompts left-padded to a multiple of 64
    scores, probs = qalign_scores(model, processor, imgs, batch_size=2, return_probs=True)
    assert scores.shape == (3,) and probs.shape == (3, 5)
    np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert expected_probs.max() > 0.5  # far from uniform: the comparison can tell tokens apart
    assert np.ptp(expected) > 1e-3  # and images apart


def test_lower_level_step_on_prepared_inputs(model, processor):
    imgs = images(2, seed=1)
    batch = qalign_batch(processor, imgs, multiple_of=32)
    assert batch["input_ids"].shape[1] % 32 == 0
    inputs = prepare_inputs(model.config, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                            batch["image_grid_thw"])
    ids = level_token_ids(processor.tokenizer)
    out = qalign_step(model, *inputs, ids, np.array([5.0, 4.0, 3.0, 2.0, 1.0]))
    expected, _ = direct_scores(model, processor, imgs)
    np.testing.assert_allclose(np.asarray(out.scores), expected, atol=1e-5)
    full = np.asarray(model.forward(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                    batch["image_grid_thw"]))
    np.testing.assert_allclose(np.asarray(out.level_logits), full[:, -1, ids], rtol=1e-5, atol=1e-4)


def test_static_shapes_compile_once(model, processor):
    qalign_scores(model, processor, images(3, seed=2), batch_size=2)
    compiled = _qalign_step._cache_size()
    qalign_scores(model, processor, images(5, seed=3), batch_size=2)  # other count, same shapes
    qalign_scores(model, processor, images(1, seed=4), batch_size=2)
    assert _qalign_step._cache_size() == compiled


def test_image_size_resizes_to_one_shape(model, processor):
    rng = np.random.default_rng(5)
    mixed = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 90), (120, 70))]
    resized = [np.asarray(Image.fromarray(a).resize((SIDE, SIDE))) for a in mixed]
    np.testing.assert_allclose(qalign_scores(model, processor, mixed, batch_size=2, image_size=(SIDE, SIDE)),
                               qalign_scores(model, processor, resized, batch_size=2), atol=1e-6)


def test_unreadable_image_is_named(model, processor):
    with pytest.raises(ValueError, match=r"image 1 \(bytes\) cannot be read"):
        qalign_scores(model, processor, [images(1)[0], b"not an image"], batch_size=2)
    with pytest.raises(ValueError, match="no images"):
        qalign_scores(model, processor, [])


def test_tokenizer_and_model_must_match(processor):
    small = ModelConfig(text=TextConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, mrope_section=(1, 1, 2)),
                        vision=VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                                            out_hidden_size=32, fullatt_block_indexes=(0,)))
    with pytest.raises(ValueError, match=r"exceed the model's vocabulary \(512\)"):
        qalign_scores(Qwen2_5_VLForConditionalGeneration(small, rngs=nnx.Rngs(0)), processor, images(1))
