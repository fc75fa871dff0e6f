"""Greedy decoding equals transformers' `generate(do_sample=False)` on the same small random
Qwen2.5-VL (weights exported by torch, loaded by jaxbiqa), with images, left padding and EOS."""

import numpy as np
import pytest
from rollout_helpers import EOS, HF_CONFIG, IMAGE_TOKEN, PAD, image_prompts
from torch_models import torch_reference

from jaxbiqa.models.qwen2_5_vl import from_pretrained
from jaxbiqa.rollout import generate

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.parity

NEW_TOKENS = 32


def torch_model(seed: int = 0, scale: float = 0.15):
    from transformers import Qwen2_5_VLConfig

    return torch_reference(Qwen2_5_VLConfig(**HF_CONFIG), seed, scale)


def test_greedy_tokens_equal_transformers_generate(tmp_path):
    reference = torch_model()
    reference.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    ids, mask, pixels, grid = image_prompts(3, seed=6, image_rows=(0, 2))

    def transformers_new_tokens(eos):
        with torch.no_grad():
            out = reference.generate(
                input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pixels),
                image_grid_thw=torch.tensor(grid), mm_token_type_ids=torch.tensor((ids == IMAGE_TOKEN).astype(np.int64)),
                max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
        return out[:, ids.shape[1]:].numpy()

    expected = transformers_new_tokens([EOS])
    tokens = generate(model, ids, mask, pixels, grid, max_new_tokens=NEW_TOKENS, eos_token_id=EOS, pad_token_id=PAD)
    assert expected.shape[1] == NEW_TOKENS
    np.testing.assert_array_equal(tokens, expected)

    # a token that row 1 writes midway as an extra EOS id: rows end there and are padded
    eos = [EOS, int(expected[1, 10])]
    expected = transformers_new_tokens(eos)
    tokens = generate(model, ids, mask, pixels, grid, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=PAD)
    assert (expected[1, 11:] == PAD).all()
    np.testing.assert_array_equal(tokens, expected)
