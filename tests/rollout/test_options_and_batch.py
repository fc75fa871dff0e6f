"""Rollout options (validated, light to import, readable by the config system) and host-side
prompt batches (buckets, re-padding, positions, clear errors)."""


import numpy as np
import pytest
from rollout_helpers import GRID, IMAGE_TOKEN, PAD, image_prompts, tiny_config

from jaxbiqa.config import ConfigError, apply_override
from jaxbiqa.rollout import RolloutSection, SamplingSection, pick_bucket, prepare_prompts
from jaxbiqa.rollout.engine import bucket_widths


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("num_samples", 0), ("temperature", 0.0),
                                         ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("stop_strings", ("",)),
                                         ("prompt_buckets", (64, 32))])
def test_sampling_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingSection(**{field: value})


def test_rollout_config_takes_config_overrides():
    config = RolloutSection()
    assignments = ("pass1.top_k=50", "pass1.prompt_buckets=256,512", "caption_until=answer", "max_caption_tokens=9")
    for assignment in assignments:
        config = apply_override(config, assignment)
    assert config.pass1.top_k == 50 and config.pass1.prompt_buckets == (256, 512)
    assert config.pass1.num_samples == 4 and config.pass1.stop_strings == ("</answer>",)
    assert config.caption_until == "answer" and config.max_caption_tokens == 9 and config.pass2.num_samples == 1
    with pytest.raises(ConfigError):
        apply_override(config, "caption_until=<think>")


def test_pass2_bucket_widths():
    """Pass 2's buckets are prefill widths below the spliced width, which is always the last one."""
    assert bucket_widths((), 90) == (90,)
    assert bucket_widths((32, 64, 128), 90) == (32, 64, 90)
    assert RolloutSection(pass2=SamplingSection(prompt_buckets=(256,))).pass2.prompt_buckets == (256,)


def test_pick_bucket():
    assert pick_bucket(30, (32, 64)) == 32 and pick_bucket(33, (32, 64)) == 64 and pick_bucket(70, ()) == 70
    with pytest.raises(ValueError, match="largest prompt bucket 64"):
        pick_bucket(65, (32, 64))


def test_prompts_are_left_padded_into_the_bucket_with_positions():
    config = tiny_config()
    ids, mask, pixels, grid = image_prompts(2, seed=0, image_rows=(1,))
    # the same rows right-padded: moved to the right end
    right_ids, right_mask = np.full_like(ids, PAD), np.zeros_like(mask)
    for r in range(2):
        row = ids[r][mask[r] > 0]
        right_ids[r, :len(row)], right_mask[r, :len(row)] = row, 1
    batch = prepare_prompts(config, right_ids, right_mask, pixels, grid, buckets=(8, 32), pad_token_id=PAD)
    assert batch.input_ids.shape == (2, 32) and batch.positions.shape == (3, 2, 32)
    for r in range(2):
        n = int(mask[r].sum())
        np.testing.assert_array_equal(batch.input_ids[r, -n:], ids[r][mask[r] > 0])
        assert (batch.attention_mask[r, -n:] == 1).all() and (batch.attention_mask[r, :-n] == 0).all()
    np.testing.assert_array_equal(batch.positions[:, 0, -int(mask[0].sum()):],
                                  np.broadcast_to(np.arange(mask[0].sum()), (3, mask[0].sum())))  # text only
    assert batch.rope_deltas[0] == 0 and batch.rope_deltas[1] < 0  # the image takes fewer positions than tokens
    assert batch.vision_plan.num_tokens == int(GRID.prod()) // 4


def test_prompt_errors_name_the_problem():
    config = tiny_config()
    ids, mask, pixels, grid = image_prompts(2, seed=0)
    with pytest.raises(ValueError, match="image"):
        prepare_prompts(config, np.where(ids == IMAGE_TOKEN, 5, ids), mask, pixels, grid)
    with pytest.raises(ValueError, match="pixel_values shape"):
        prepare_prompts(config, ids, mask, pixels[:-1], grid)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        prepare_prompts(config, ids, np.stack([mask[0], 0 * mask[1]]), pixels, grid)
    with pytest.raises(ValueError, match="go together"):
        prepare_prompts(config, ids, mask, pixels, None)
