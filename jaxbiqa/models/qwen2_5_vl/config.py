"""Qwen2.5-VL architecture config, read from a Hugging Face `config.json` (or `Qwen2_5_VLConfig`).

Only the fields the JAX model needs are kept; `to_hf_dict` writes a config that transformers'
`Qwen2_5_VLForConditionalGeneration.from_pretrained` accepts. Runtime options (dtypes, remat,
scanned layers) live beside the architecture so one object describes how the model is built.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

DType = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6  # fixed in transformers' vision blocks

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as the image processor emits it: C * Tp * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000
    bos_token_id: int = 151643
    eos_token_id: int = 151645

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the decoder's projections (the method's defaults: r=8, alpha=16, dropout 0.1).

    `param_dtype` is the adapters' own storage dtype, float32 by default whatever the base's: the
    adapters are what trains, over a (typically bfloat16) frozen base.
    """
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = LORA_TARGETS
    param_dtype: DType = "float32"

    def __post_init__(self):
        if self.rank < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig needs rank >= 0 and 0 <= dropout < 1, got {self}")
        unknown = set(self.target_modules) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"LoraConfig.target_modules {sorted(unknown)} not among {LORA_TARGETS}")

    def rank_for(self, module: str) -> int:
        return self.rank if module in self.target_modules else 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    # runtime options, not part of the checkpoint
    param_dtype: DType = "float32"
    dtype: DType = "float32"  # compute dtype
    remat: bool = False  # nnx.remat around each decoder / vision layer
    scan_layers: bool = False  # one compiled layer body applied with nnx.scan
    lora: LoraConfig | None = None  # adapters on the decoder projections; None = plain model
    # decoder attention (`text.attention`): "blocked" reads only the filled part of the KV cache
    # (key blocks of `attention_block` slots, online softmax); "dense" attends over every cache
    # slot with one masked softmax (the reference)
    attention: Literal["dense", "blocked"] = "blocked"
    attention_block: int = 64

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        text = {k: v for k, v in dataclasses.asdict(self.text).items() if k not in ("rope_theta", "mrope_section")}
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": self.text.rope_theta,
                                   "mrope_section": list(self.text.mrope_section)}
        text["head_dim"] = self.text.head_dim
        vision = dataclasses.asdict(self.vision)
        vision.pop("rms_norm_eps")
        vision["fullatt_block_indexes"] = list(self.vision.fullatt_block_indexes)
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "text_config": text,
            "vision_config": vision,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.param_dtype,
        }


def _pick(cls, source: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in source.items() if k in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def from_hf(config: Any, **runtime: Any) -> ModelConfig:
    """ModelConfig from a `config.json` path, its directory, a dict, or a transformers config.

    Accepts both the released layout (text fields at top level, `rope_scaling.mrope_section`)
    and transformers 5's (`text_config`, `rope_parameters`). `runtime` sets dtype/remat/scan options.
    """
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        raw = json.loads(path.read_text())
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raw = config.to_dict()
    text_raw = {**{k: v for k, v in raw.items() if k not in ("text_config", "vision_config")},
                **(raw.get("text_config") or {})}
    rope = text_raw.get("rope_parameters") or text_raw.get("rope_scaling") or {}
    if "rope_theta" in rope:
        text_raw["rope_theta"] = rope["rope_theta"]
    if "mrope_section" in rope:
        text_raw["mrope_section"] = rope["mrope_section"]
    text = TextConfig(**_pick(TextConfig, text_raw))
    if 2 * sum(text.mrope_section) != text.head_dim:
        raise ValueError(f"mrope_section {text.mrope_section} must sum to head_dim/2 = {text.head_dim // 2}")
    vision = VisionConfig(**_pick(VisionConfig, raw.get("vision_config") or {}))
    top = _pick(ModelConfig, {k: v for k, v in raw.items() if k not in ("text", "vision")})
    top.pop("dtype", None)
    top.pop("param_dtype", None)
    if "tie_word_embeddings" in (raw.get("text_config") or {}) and "tie_word_embeddings" not in raw:
        top["tie_word_embeddings"] = raw["text_config"]["tie_word_embeddings"]
    return ModelConfig(text=text, vision=vision, **top, **runtime)
