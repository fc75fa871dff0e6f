"""The demo recipe and its offline assets: the tokenizer puts Qwen's added tokens at the ids the
model config and the recipe name, every warm-start completion of the synthetic set fits the
recipe's generation budgets, and the model folder builds the demo policy."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxbiqa.config import load_config
from jaxbiqa.data.synthetic import DISTORTIONS, PHOTOS, annotate
from jaxbiqa.demo_assets import (
    DEMO_PREFIX, DEMO_TOKEN_IDS, DemoModelSpec, demo_model_config, ensure_demo_model, resolve_demo_model)
from jaxbiqa.models.build import build_policy, build_processor
from jaxbiqa.prompts import PROMPT_SETS
from jaxbiqa.rewards import split_caption
from jaxbiqa.rl.references import reference_completion


@pytest.fixture(scope="module")
def recipe():
    return load_config("demo_cpu")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return ensure_demo_model(tmp_path_factory.mktemp("demo") / "model")


@pytest.fixture(scope="module")
def processor(recipe, demo_dir):
    section = dataclasses.replace(recipe.model, path=str(demo_dir))
    return build_processor(section, recipe.data)


def test_added_tokens_at_the_configured_ids(recipe, demo_dir, processor):
    tokenizer = processor.tokenizer
    for token, index in DEMO_TOKEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == index
    config = json.loads((demo_dir / "config.json").read_text())
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config["vision_start_token_id"] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config["text_config"]["vocab_size"] >= len(tokenizer)
    assert recipe.rollout.pass1.eos_token_ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert recipe.rollout.pass1.pad_token_id == tokenizer.pad_token_id
    # special tokens vanish when decoding, text round-trips
    text = processor.pass2_text("<caption>\nA blurred cat.\n</caption>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert "<|im_start|>" not in tokenizer.decode(ids, skip_special_tokens=True)


def test_completions_fit_the_generation_budgets(recipe, processor):
    encode = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pass1, pass2 = [], []
    for photo in PHOTOS:
        for distortion in (None, *DISTORTIONS):
            for level in (0,) if distortion is None else range(1, 6):
                for mos in (1.0, 3.47, 5.0):
                    completion = reference_completion({"mos_norm": mos, **annotate(photo, distortion, level, mos)})
                    caption = split_caption(completion)
                    pass1.append(len(encode(completion)) + 1)  # + the end-of-turn token
                    pass2.append(len(encode(completion[len(caption):])) + 1)
    assert max(pass1) <= recipe.rollout.pass1.max_new_tokens, max(pass1)
    assert max(pass2) <= recipe.rollout.pass2.max_new_tokens, max(pass2)
    prompt = encode(processor.pass1_text(16))
    assert len(prompt) < 120  # the clause-level BPE keeps the method's long system prompt short


def test_demo_path_is_resolved_by_the_commands_not_the_model_builder(recipe, demo_dir, tmp_path):
    """`demo:FOLDER` is built and replaced by FOLDER (`resolve_demo_model`, what the commands call);
    the model builder below them refuses the scheme with a message naming the resolver."""
    named = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, path=f"{DEMO_PREFIX}{tmp_path / 'm'}"))
    resolved = resolve_demo_model(named)
    assert resolved.model.path == str(tmp_path / "m") and (tmp_path / "m" / "tokenizer.json").is_file()
    assert resolve_demo_model(resolved) == resolved
    with pytest.raises(ValueError, match="resolve_demo_model"):
        build_policy(named.model)


def test_demo_folder_builds_a_random_policy(recipe, demo_dir):
    section = dataclasses.replace(recipe.model, path=str(demo_dir))
    model = build_policy(section, seed=0)
    spec = DemoModelSpec()
    assert model.config.text.hidden_size == spec.hidden_size
    assert model.config.vision.out_hidden_size == spec.hidden_size
    assert model.config.text.vocab_size == spec.vocab_size == demo_model_config(spec)["text_config"]["vocab_size"]
    assert np.isfinite(np.asarray(model.lm_head.kernel[...])).all()


def test_prompt_set_is_chosen_by_the_data_section(recipe, demo_dir):
    section = dataclasses.replace(recipe.model, path=str(demo_dir))
    assert build_processor(section, recipe.data).prompts == PROMPT_SETS[recipe.data.prompts]
    with pytest.raises(ValueError, match=r"data.prompts: unknown prompt set 'nope'; known: \['humaniqa'\]"):
        build_processor(section, dataclasses.replace(recipe.data, prompts="nope"))
