"""The demo's model folder, built offline: a small byte-level BPE tokenizer and a tiny Qwen2.5-VL config.

The real Qwen2.5 tokenizer works offline too (`processing.build_qwen2_5_tokenizer`), but its
151,665-token vocabulary would make the embedding and the output projection of a tiny model
(hidden 96) hold ~29M parameters, most of the model and of every step's time on a CPU. The demo
instead trains a byte-level BPE with `tokenizers` (under a second) on what the model ever reads
or writes: the method's prompts (weighted), the chat template's role names and every synthetic
annotation in the warm-start template (`jaxbiqa.rl.references`).

Its pre-tokenizer cuts only at digits (one token each, so a rating is `3` `.` `4` `2`), newlines
and punctuation, so merges may span the words of a clause. Measured with the 1,536-token
vocabulary: the pass-1 prompt is 101 tokens with 16 image tokens (283 with Qwen2's word-level
pre-tokenizer and a 1,024-token BPE), a warm-start completion 38-49 tokens (about 96), the
pass-2 prompt 69-80; a warm-start row is 165 tokens instead of 395, which is what makes the
demo's 400 warm-start steps fit in minutes on two cores. The price: a clause the corpus repeats
is one token, so a caption is a sequence of a few clause choices rather than of words.
Byte-level fallback keeps every text encodable. The 22 Qwen2.5-VL added tokens take ids 0-21 in Qwen's order (`<|endoftext|>` 0,
`<|im_start|>` 1, `<|im_end|>` 2, `<|vision_start|>` 9, `<|vision_end|>` 10, `<|image_pad|>` 12),
the fixed ids the model config and the demo recipe name (`DEMO_TOKEN_IDS`); the first 14 are
special (dropped when decoding), as in Qwen's tokenizer.

`ensure_demo_model(folder)` writes `tokenizer.json`, `tokenizer_config.json` and `config.json`
(no weights: `jaxbiqa.models.build` initialises the model randomly) unless they exist. A recipe
names it as `model.path = "demo:FOLDER"`; the commands (`jaxbiqa train`, `eval`, `score`, `demo`)
pass their config through `resolve_demo_model`, which builds the folder and puts its plain path
there, so nothing below the commands knows the scheme.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from jaxbiqa.config import Config
from jaxbiqa.processing import ADDED_TOKENS, CHAT_TEMPLATE, SPECIAL_TOKENS

log = logging.getLogger("jaxbiqa.demo")

DEMO_PREFIX = "demo:"
# pre-tokenizer cuts: every digit, newline and punctuation mark is its own piece
PIECE_BOUNDARIES = r"\p{N}|\n|[.,;:!?()]"
PROMPT_WEIGHT = 50  # prompts appear this many times in the corpus, so BPE compresses them first
ALL_ADDED = SPECIAL_TOKENS + ADDED_TOKENS
DEMO_TOKEN_IDS = {token: i for i, token in enumerate(ALL_ADDED)}
ENDOFTEXT_ID = DEMO_TOKEN_IDS["<|endoftext|>"]
IM_END_ID = DEMO_TOKEN_IDS["<|im_end|>"]


@dataclasses.dataclass(frozen=True)
class DemoModelSpec:
    """Sizes of the demo's tiny Qwen2.5-VL (the architecture of the 7B, scaled down)."""

    bpe_vocab: int = 1536          # tokenizer size, added tokens included
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_heads: int = 2
    rope_theta: float = 10000.0

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's, rounded up to a multiple of 64."""
        return -(-self.bpe_vocab // 64) * 64


# ---------------------------------------------------------------- tokenizer

def demo_corpus() -> list[str]:
    """Every text the demo model reads or writes: prompts, role names, and the warm-start
    completion of every synthetic photo x distortion x level at every rating x.00 ... x.99."""
    from jaxbiqa.data.synthetic import DISTORTIONS, PHOTOS, annotate
    from jaxbiqa.prompts import PromptSet
    from jaxbiqa.rl.references import reference_completion

    prompts = PromptSet()
    texts = [prompts.pass1_system, prompts.pass1_question, prompts.pass2_system, prompts.pass2_user(""),
             "system\nuser\nassistant\nYou are a helpful assistant."] * PROMPT_WEIGHT
    for photo in PHOTOS:
        for distortion in (None, *DISTORTIONS):
            for level in ((0,) if distortion is None else range(1, 6)):
                mos = 5.0 if distortion is None else 5.0 - 0.8 * level
                record = {"mos_norm": mos, **annotate(photo, distortion, level, mos)}
                completion = reference_completion(record)
                texts += [completion, prompts.pass2_user(completion.partition("<think>")[0])]
    texts.append(" ".join(f"{r / 100:.2f}" for r in range(100, 501)))
    return texts


def build_demo_tokenizer(out_dir: str | Path, vocab_size: int = DemoModelSpec.bpe_vocab) -> Path:
    """Train the demo BPE and save it in transformers' layout (loadable by `processing.load_tokenizer`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(ALL_ADDED) + 256:
        raise ValueError(f"vocab_size {vocab_size} must leave room for {len(ALL_ADDED)} added tokens and 256 bytes")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECE_BOUNDARIES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(ALL_ADDED), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(demo_corpus(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED_TOKENS])
    wrong = {t: tokenizer.token_to_id(t) for t, i in DEMO_TOKEN_IDS.items() if tokenizer.token_to_id(t) != i}
    if wrong:
        raise RuntimeError(f"demo tokenizer: added tokens at unexpected ids {wrong}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(SPECIAL_TOKENS[1:]), chat_template=CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------- model config

def demo_model_config(spec: DemoModelSpec = DemoModelSpec()) -> dict[str, Any]:
    """The Hugging Face `config.json` of the demo model (transformers 5 layout)."""
    head_dim = spec.hidden_size // spec.num_heads
    if head_dim % 2 or spec.hidden_size % spec.num_heads:
        raise ValueError(f"hidden_size {spec.hidden_size} / num_heads {spec.num_heads} must give an even head_dim")
    half = head_dim // 2  # M-RoPE sections (temporal, height, width) in the 7B's 1/4, 3/8, 3/8 proportions
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "text_config": {
            "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size, "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
            "head_dim": head_dim, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "hidden_act": "silu",
            "bos_token_id": ENDOFTEXT_ID, "eos_token_id": IM_END_ID, "pad_token_id": ENDOFTEXT_ID,
            "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": mrope},
        },
        "vision_config": {
            "depth": spec.vision_depth, "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate, "num_heads": spec.vision_heads, "in_channels": 3,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "out_hidden_size": spec.hidden_size, "fullatt_block_indexes": [spec.vision_depth - 1],
            "hidden_act": "silu",
        },
        "image_token_id": DEMO_TOKEN_IDS["<|image_pad|>"],
        "video_token_id": DEMO_TOKEN_IDS["<|video_pad|>"],
        "vision_start_token_id": DEMO_TOKEN_IDS["<|vision_start|>"],
        "vision_end_token_id": DEMO_TOKEN_IDS["<|vision_end|>"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def ensure_demo_model(folder: str | Path, spec: DemoModelSpec = DemoModelSpec()) -> Path:
    """The demo model folder (tokenizer + config.json), built in `folder` unless already there."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        log.info("building the demo tokenizer in %s", folder)
        build_demo_tokenizer(folder, spec.bpe_vocab)
    if not (folder / "config.json").is_file():
        (folder / "config.json").write_text(json.dumps(demo_model_config(spec), indent=2) + "\n")
    return folder


def resolve_demo_model(config: Config) -> Config:
    """`config` with a `demo:FOLDER` model path built (`ensure_demo_model`) and replaced by FOLDER, a
    random initialisation (`model.init="random"`); any other config unchanged."""
    path = config.model.path
    if not path.startswith(DEMO_PREFIX):
        return config
    folder = ensure_demo_model(path[len(DEMO_PREFIX):])
    return dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(folder), init="random"))
