"""One-pass probability scoring (Q-Align style): no generation, one forward pass per batch.

The model reads the image and a question, then the start of its own answer; the score is the
expectation of the quality level it would name next:

    p = softmax(logits of the first token of " excellent", " good", " fair", " poor", " bad")
    score = sum_k p_k w_k,   w = 5, 4, 3, 2, 1

With the default `QAlignPrompt` the model sees exactly (Qwen2.5-VL chat template, N image tokens):

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <|vision_start|><|image_pad|> x N<|vision_end|>How would you rate the quality of this image?<|im_end|>
    <|im_start|>assistant
    The quality of the image is

and the level words are scored at the last position (after "is"). Each level word must be a
single token when it follows the answer prefix (" excellent" is Qwen id 9073 with its leading
space); `level_token_ids` checks that and raises otherwise.

Only the hidden state of the last position meets the LM head, and only the head's columns of the
level tokens: no `[B, T, vocab]` logits. Batches have static shapes: the last batch is padded with
copies of its last image, prompts are left-padded to a multiple of `length_multiple`, so a set of
equally sized images compiles once (`image_size` resizes every image to make that so).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.config import UserError
from jaxbiqa.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, VisionPlan, prepare_inputs
from jaxbiqa.models.qwen2_5_vl.model import logits_from_hidden
from jaxbiqa.processing import ImageLike, Processor, load_image


@dataclasses.dataclass(frozen=True)
class QAlignPrompt:
    """The conversation of probability scoring and the level words with their weights."""

    question: str = "How would you rate the quality of this image?"  # Q-Align's question
    answer_prefix: str = "The quality of the image is"  # start of the assistant turn; levels follow it
    system: str | None = None  # None: the chat template's default system turn
    levels: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
    weights: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0, 1.0)

    def __post_init__(self):
        if len(self.levels) != len(self.weights) or len(self.levels) < 2:
            raise ValueError(f"QAlignPrompt needs at least two levels and one weight per level, got "
                             f"levels {self.levels} and weights {self.weights}")
        if self.answer_prefix != self.answer_prefix.rstrip():
            raise ValueError(f"QAlignPrompt answer_prefix {self.answer_prefix!r} must not end in whitespace: "
                             f"the level words bring their leading space (' excellent' is one Qwen token)")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"QAlignPrompt levels must differ, got {self.levels}")


class QAlignOutput(NamedTuple):
    level_logits: jax.Array  # [B, K] float32, logits of the level tokens at the last position
    probs: jax.Array  # [B, K] softmax over the K levels
    scores: jax.Array  # [B] sum_k probs * weights


def level_token_ids(tokenizer, prompt: QAlignPrompt = QAlignPrompt()) -> np.ndarray:
    """int32 `[K]` ids of the level words as they follow `prompt.answer_prefix` (with a leading space).

    Raises ValueError naming the word when it is not one token there (a word the vocabulary splits,
    or one that merges with the end of the prefix).
    """
    prefix = tokenizer.encode(prompt.answer_prefix, add_special_tokens=False)
    ids = []
    for word in prompt.levels:
        whole = tokenizer.encode(prompt.answer_prefix + " " + word, add_special_tokens=False)
        if len(whole) != len(prefix) + 1 or whole[: len(prefix)] != prefix:
            pieces = tokenizer.convert_ids_to_tokens(whole[len(prefix) - 1:] if prefix else whole)
            raise UserError(f"quality level {word!r} is not a single token after the answer prefix "
                             f"{prompt.answer_prefix!r}: the tokenizer gives {pieces}; choose level words "
                             f"that are one token each (with their leading space)")
        ids.append(whole[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"quality levels {prompt.levels} share token ids {ids}")
    return np.asarray(ids, dtype=np.int32)


def qalign_text(processor: Processor, num_image_tokens: int, prompt: QAlignPrompt = QAlignPrompt()) -> str:
    """The rendered prompt of one image, ending with the answer prefix."""
    messages = []
    if prompt.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.question}]})
    return processor.chat(messages, [num_image_tokens]) + prompt.answer_prefix


def qalign_batch(processor: Processor, images: Sequence[ImageLike], prompt: QAlignPrompt = QAlignPrompt(),
                 length: int | None = None, multiple_of: int = 1) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (left-padded), pixel_values and image_grid_thw of one prompt per image."""
    vision = processor.images(images)
    texts = [qalign_text(processor, int(n), prompt) for n in processor.num_image_tokens(vision["image_grid_thw"])]
    return {**processor.encode(texts, length, multiple_of), **vision}


def level_scores(level_logits: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(softmax over the levels `[B, K]`, expected weight `[B]`)."""
    probs = jax.nn.softmax(level_logits.astype(jnp.float32), axis=-1)
    return probs, probs @ jnp.asarray(weights, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _qalign_step(graphdef, state, input_ids, positions, attention_mask, pixel_values, plan, level_ids, weights):
    model = nnx.merge(graphdef, state)
    hidden = model(input_ids, positions, attention_mask, pixel_values, plan, compute_logits=False).hidden_states
    kernel = model.head_kernel()[:, level_ids]  # [hidden, K]: only the level tokens' columns
    logits = logits_from_hidden(hidden[:, -1], kernel, model.config.dtype)  # left padding: -1 is the last token
    probs, scores = level_scores(logits, weights)
    return QAlignOutput(logits, probs, scores)


def qalign_step(model: Qwen2_5_VLForConditionalGeneration, input_ids: jax.Array, positions: jax.Array,
                attention_mask: jax.Array, pixel_values: jax.Array | None, vision_plan: VisionPlan | None,
                level_ids: jax.Array, weights: jax.Array) -> QAlignOutput:
    """Jitted scoring of prepared inputs (`prepare_inputs`' outputs; prompts left-padded, ending with
    the answer prefix): level logits, probabilities and scores of each row.

    Compiles once per (batch, length, image sizes); `level_ids` `[K]` and `weights` `[K]` are traced.
    """
    graphdef, state = nnx.split(model)
    return _qalign_step(graphdef, state, input_ids, positions, attention_mask, pixel_values, vision_plan,
                        jnp.asarray(level_ids, jnp.int32), jnp.asarray(weights, jnp.float32))


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def qalign_scores(model: Qwen2_5_VLForConditionalGeneration, processor: Processor, images: Sequence[ImageLike], *,
                  batch_size: int = 8, prompt: QAlignPrompt = QAlignPrompt(), length_multiple: int = 64,
                  image_size: tuple[int, int] | None = None, return_probs: bool = False,
                  progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Probability-weighted quality score (1-5 with the default weights) of each image, float32 `[N]`.

    `images`: PIL images, uint8 arrays, paths or encoded bytes. `image_size=(width, height)` resizes
    them all first (one compiled shape for any input sizes). With `return_probs`, also the level
    probabilities `[N, K]` in `prompt.levels` order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not images:
        raise ValueError("no images to score")
    level_ids = level_token_ids(processor.tokenizer, prompt)
    if level_ids.max() >= model.config.text.vocab_size:
        raise ValueError(f"level token ids {level_ids.tolist()} exceed the model's vocabulary "
                         f"({model.config.text.vocab_size}): tokenizer and model do not match")
    weights = np.asarray(prompt.weights, np.float32)
    graphdef, state = nnx.split(model)
    batches = _batches(len(images), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(images) // batch_size), desc="probability scoring", unit="batch")
    scores, probs = [], []
    for start, stop in batches:
        chunk = []
        for i in range(start, stop):
            try:
                pil = load_image(images[i])
            except (OSError, ValueError, TypeError) as err:
                raise ValueError(f"image {i} ({_describe(images[i])}) cannot be read: {err}") from err
            chunk.append(pil if image_size is None else pil.resize(image_size))
        chunk += [chunk[-1]] * (batch_size - len(chunk))  # static batch shape
        batch = qalign_batch(processor, chunk, prompt, multiple_of=length_multiple)
        inputs = prepare_inputs(model.config, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                batch["image_grid_thw"])
        out = _qalign_step(graphdef, state, *inputs, jnp.asarray(level_ids), jnp.asarray(weights))
        scores.append(np.asarray(out.scores)[: stop - start])
        probs.append(np.asarray(out.probs)[: stop - start])
    scores_np = np.concatenate(scores).astype(np.float32)
    return (scores_np, np.concatenate(probs).astype(np.float32)) if return_probs else scores_np


def _describe(image: object) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
