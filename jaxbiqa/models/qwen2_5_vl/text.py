"""Qwen2.5-VL text decoder: GQA with qkv bias, RMSNorm, SwiGLU, M-RoPE, and a fixed-size KV cache.

One code path serves training (no cache), prefill (many tokens into the cache) and decode (one
token). Prompts are left padded, so every row of a batch writes the same cache slots
`[index, index + T)`; a query at slot s sees the valid keys at slots <= s. The cache is a plain
pytree of arrays (no Python state), so it can be donated, repeated for group sampling and carried
through `lax.while_loop`. It is stored heads-major (`[layers, batch, kv_heads, slots, head_dim]`,
the layout the attention contractions read) and each layer writes its new entries straight into
the stacked arrays, so a decode step updates the cache in place and never copies or transposes it.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxbiqa.models.qwen2_5_vl.config import LoraConfig, ModelConfig, TextConfig
from jaxbiqa.models.qwen2_5_vl.lora import Linear
from jaxbiqa.models.qwen2_5_vl.rope import apply_rotary, mrope_cos_sin
from jaxbiqa.sharding import constrain

embedding_init = nnx.initializers.normal(0.02)  # transformers' initializer_range
Implementation = Literal["dense", "blocked"]  # of the decoder's attention (see `ModelConfig.attention`)


class KVCache(NamedTuple):
    """Keys and values of every layer for a batch, `max_len` slots long.

    k, v: `[layers, batch, kv_heads, max_len, head_dim]`; mask: `[batch, max_len]`, True where a
    slot holds a real (non-padding) token; index: int32 scalar, the next slot to write.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


# logical axis names of the cache leaves, for jaxbiqa.sharding (e.g. out_shardings of a jitted prefill)
CACHE_AXES = KVCache(k=("layers", "batch", "kv_heads", "cache_length", "head_dim"),
                     v=("layers", "batch", "kv_heads", "cache_length", "head_dim"),
                     mask=("batch", "cache_length"), index=())


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: str | jnp.dtype | None = None) -> KVCache:
    """An empty cache; `dtype` defaults to the model's compute dtype (bf16 halves the cache)."""
    t = config.text
    shape = (t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return KVCache(k=constrain(jnp.zeros(shape, dtype), CACHE_AXES.k),
                   v=constrain(jnp.zeros(shape, dtype), CACHE_AXES.v),
                   mask=constrain(jnp.zeros((batch, max_len), bool), CACHE_AXES.mask),
                   index=jnp.zeros((), jnp.int32))


# what jax.nn.dot_product_attention puts at masked float32 logits (finite: a row with every key
# masked, a padding query, gets uniform weights instead of NaN)
_MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of `q [B, T, heads, head_dim]` over heads-major keys and values
    `k, v [B, kv_heads, S, head_dim]` (a layer's cache, or the tokens' own), `mask [B, 1, T, S]`;
    returns `[B, T, heads, head_dim]`: the "dense" path, one masked softmax over every slot.

    The arithmetic of `jax.nn.dot_product_attention` (float32 logits and softmax, probabilities in
    the value dtype), with each key/value head contracted against its query group where it lies."""
    b, t, heads, d = q.shape
    q = _grouped(q, k.shape[1])
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, :, None], logits * jnp.float32(d ** -0.5), _MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
    return _ungrouped(out).astype(q.dtype)


def _grouped(q: jax.Array, kv_heads: int) -> jax.Array:
    """`[B, T, heads, d]` -> `[B, kv_heads, groups, T, d]`: both contractions are then plain batched
    matmuls (XLA's CPU backend runs other operand orders far slower)."""
    b, t, heads, d = q.shape
    return jnp.moveaxis(q.reshape(b, t, kv_heads, heads // kv_heads, d), 1, 3)


def _ungrouped(out: jax.Array) -> jax.Array:
    b, kv_heads, groups, t, d = out.shape
    return jnp.moveaxis(out, 3, 1).reshape(b, t, kv_heads * groups, d)


class Visibility(NamedTuple):
    """Which keys each query of a forward sees, in the form its attention path reads.

    dense: `[B, 1, T, S]` over every key slot ("dense" path); valid: `[B, T]` the tokens that are
    real; prior: `[B, S]` the cache slots that held real tokens before this call (None: no cache).
    A query sees the real cached tokens before it and the real tokens of its own call up to itself."""

    dense: jax.Array | None
    valid: jax.Array
    prior: jax.Array | None


class _Softmax(NamedTuple):
    """Running state of a softmax over key blocks (float32): max logit, sum of exponentials and the
    weighted sum of values, per query; `[B, kv_heads, groups, T]` (+ `head_dim` for `acc`)."""

    max: jax.Array
    sum: jax.Array
    acc: jax.Array


def _attend_block(state: _Softmax, q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> _Softmax:
    """Fold the keys `k, v [B, kv_heads, S', d]` into `state`; `visible [B, T, S']`. Masked logits
    take the dense path's finite value, so a query that sees no key gets the same uniform weights."""
    logits = jnp.einsum("bkgtd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = jnp.where(visible[:, None, None], logits * jnp.float32(q.shape[-1] ** -0.5), _MASKED_LOGIT)
    top = jnp.maximum(state.max, jnp.max(logits, axis=-1))
    weights = jnp.exp(logits - top[..., None])
    scale = jnp.exp(state.max - top)
    acc = state.acc * scale[..., None] + jnp.einsum("bkgts,bksd->bkgtd", weights.astype(v.dtype), v,
                                                    preferred_element_type=jnp.float32)
    return _Softmax(top, state.sum * scale + jnp.sum(weights, axis=-1), acc)


def _own_keys(state: _Softmax, q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, block: int) -> _Softmax:
    """Fold in the call's own keys (causal), `block` keys at a time: a long prompt never holds more
    than `[B, heads, T, block]` logits."""
    t = k.shape[2]
    query = jnp.arange(t)[:, None]
    if t <= block:
        return _attend_block(state, q, k, v, (jnp.arange(t)[None] <= query)[None] & valid[:, None])
    blocks = -(-t // block)
    pad = blocks * block - t
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (k, v))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))

    def fold(j, state):
        keys = j * block + jnp.arange(block)
        visible = (keys[None] <= query)[None] & jax.lax.dynamic_slice_in_dim(valid, j * block, block, 1)[:, None]
        kj, vj = (jax.lax.dynamic_slice_in_dim(x, j * block, block, 2) for x in (k, v))
        return _attend_block(state, q, kj, vj, visible)

    return jax.lax.fori_loop(0, blocks, fold, state)


def _cached_keys(state: _Softmax, q: jax.Array, kv: tuple[jax.Array, jax.Array], layer: int | jax.Array,
                 prior: jax.Array, index: jax.Array, block: int) -> _Softmax:
    """Fold in the cached keys before slot `index`, read block by block straight from the stacked
    cache `kv` (`[layers, B, kv_heads, S, d]`): ceil(index / block) blocks, however large S is."""
    _, b, heads, slots, d = kv[0].shape
    block = min(block, slots)

    def fold(j, state):
        start = jnp.minimum(j * block, slots - block)  # the last block may overlap the one before
        k, v = (jax.lax.dynamic_slice(x, (layer, 0, 0, start, 0), (1, b, heads, block, d))[0] for x in kv)
        k, v = jax.lax.optimization_barrier((k, v))
        slot = start + jnp.arange(block)
        visible = (jax.lax.dynamic_slice_in_dim(prior, start, block, 1) & (slot >= j * block)
                   & (slot < index))[:, None]
        return _attend_block(state, q, k, v, visible)

    return jax.lax.fori_loop(0, (index + block - 1) // block, fold, state)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, seen: Visibility, block: int,
                      kv: tuple[jax.Array, jax.Array] | None = None, layer: int | jax.Array = 0,
                      index: jax.Array | None = None) -> jax.Array:
    """The "blocked" path: `q [B, T, heads, d]` attends to its own keys `k, v [B, kv_heads, T, d]`
    and, with a cache `kv`, to the real tokens of `layer` before slot `index`, with an online softmax
    over key blocks; no key slot at or after `index + T` is read. Returns `[B, T, heads, d]`."""
    qg = _grouped(q, k.shape[1])
    shape = qg.shape[:-1]
    state = _Softmax(jnp.full(shape, _MASKED_LOGIT, jnp.float32), jnp.zeros(shape, jnp.float32),
                     jnp.zeros(qg.shape, jnp.float32))
    if kv is not None:
        state = _cached_keys(state, qg, kv, layer, seen.prior, index, block)
    state = _own_keys(state, qg, k, v, seen.valid, block)
    out = state.acc / state.sum[..., None]
    return _ungrouped(out.astype(v.dtype)).astype(q.dtype)


def _rms_norm(size: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(size, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)))


def _split_keys(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def _linear_factory(lora: LoraConfig | None, **kw):
    """Builder of the decoder's projections: plain Linears unless `lora` targets the module by name."""
    def make(name: str, n_in: int, n_out: int, axes: tuple[str, str], bias: bool) -> Linear:
        adapter = {}
        if lora and lora.rank_for(name):
            adapter = dict(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                           adapter_dtype=jnp.dtype(lora.param_dtype))
        return Linear(n_in, n_out, axes=axes, use_bias=bias, **adapter, **kw)
    return make


class Attention(nnx.Module):
    def __init__(self, config: TextConfig, lora: LoraConfig | None, *, dtype, param_dtype, rngs: nnx.Rngs,
                 attention: Implementation = "blocked", block: int = 64):
        self.attention, self.block = attention, block
        self.num_heads, self.num_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                            config.head_dim)
        e, q, kv = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        linear = _linear_factory(lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = linear("q_proj", e, q, ("embed", "heads"), True)
        self.k_proj = linear("k_proj", e, kv, ("embed", "kv_heads"), True)
        self.v_proj = linear("v_proj", e, kv, ("embed", "kv_heads"), True)
        self.o_proj = linear("o_proj", q, e, ("heads", "embed"), False)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, seen: Visibility,
                 kv: tuple[jax.Array, jax.Array] | None, layer: int | jax.Array, index: jax.Array | None,
                 keys: list[jax.Array | None]) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attention output, and with a cache `kv` (every layer's keys and values, `KVCache.k/v`) that
        cache with this `layer`'s new entries written at slot `index`. The dense path then attends over
        all of the layer's cache slots; the blocked path over its own keys and the filled slots before
        `index`, read from the stacked cache (no per-layer slice of it is made)."""
        b, t, _ = x.shape
        q = self.q_proj(x, keys[0]).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, keys[1]).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, keys[2]).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = constrain(apply_rotary(q, cos, sin), ("batch", "length", "heads", "head_dim"))
        k = constrain(apply_rotary(k, cos, sin), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # heads-major, as the cache
        if kv is not None:
            start = (layer, 0, 0, index, 0)
            kv = tuple(jax.lax.dynamic_update_slice(cache, new[None].astype(cache.dtype), start)
                       for cache, new in zip(kv, (k, v)))
        if self.attention == "blocked":
            out = blocked_attention(q, k, v, seen, self.block, kv, layer, index)
        else:
            if kv is not None:
                k, v = (jax.lax.dynamic_index_in_dim(cache, layer, keepdims=False) for cache in kv)
            out = grouped_attention(q, k, v, seen.dense)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        return self.o_proj(out.reshape(b, t, -1), keys[3]), kv


class MLP(nnx.Module):
    def __init__(self, config: TextConfig, lora: LoraConfig | None, *, dtype, param_dtype, rngs: nnx.Rngs):
        if config.hidden_act != "silu":
            raise ValueError(f"text hidden_act {config.hidden_act!r} is not supported (Qwen2.5-VL uses 'silu')")
        linear = _linear_factory(lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        e, m = config.hidden_size, config.intermediate_size
        self.gate_proj = linear("gate_proj", e, m, ("embed", "mlp"), False)
        self.up_proj = linear("up_proj", e, m, ("embed", "mlp"), False)
        self.down_proj = linear("down_proj", m, e, ("mlp", "embed"), False)

    def __call__(self, x: jax.Array, keys: list[jax.Array | None]) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x, keys[0])) * self.up_proj(x, keys[1])
        return self.down_proj(constrain(h, ("batch", "length", "mlp")), keys[2])


class DecoderLayer(nnx.Module):
    def __init__(self, config: TextConfig, lora: LoraConfig | None = None, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, attention: Implementation = "blocked", attention_block: int = 64,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = Attention(config, lora, attention=attention, block=attention_block, **kw)
        self.mlp = MLP(config, lora, **kw)
        self.input_layernorm = _rms_norm(config.hidden_size, config.rms_norm_eps, **kw)
        self.post_attention_layernorm = _rms_norm(config.hidden_size, config.rms_norm_eps, **kw)

    def __call__(self, h, cos, sin, mask, kv, layer, index, key):
        keys = _split_keys(key, 7)
        attn, kv = self.self_attn(self.input_layernorm(h), cos, sin, mask, kv, layer, index, keys[:4])
        h = h + attn
        h = h + self.mlp(self.post_attention_layernorm(h), keys[4:])
        return constrain(h, ("batch", "length", "embed")), kv


_remat_layer = nnx.remat(DecoderLayer.__call__)


class TextModel(nnx.Module):
    """Decoder stack. `layers` is an `nnx.List` of `DecoderLayer`, or with `scan_layers` one
    `DecoderLayer` whose parameters carry a leading layer axis (logical name "layers")."""

    def __init__(self, config: TextConfig, *, lora: LoraConfig | None = None, dtype="float32",
                 param_dtype="float32", remat: bool = False, scan_layers: bool = False,
                 attention: Implementation = "blocked", attention_block: int = 64, rngs: nnx.Rngs):
        if attention not in ("dense", "blocked") or attention_block < 1:
            raise ValueError(f"attention {attention!r} / attention_block {attention_block}: the implementation is "
                             "'dense' or 'blocked' and the block size >= 1")
        if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
            raise ValueError(f"hidden_size {config.hidden_size}, heads {config.num_attention_heads} and kv heads "
                             f"{config.num_key_value_heads} must divide evenly")
        self.config = config
        self.remat = remat
        self.scan_layers = scan_layers
        dtype, param_dtype = jnp.dtype(dtype), jnp.dtype(param_dtype)
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.with_partitioning(embedding_init, ("vocab", "embed")),
                                      rngs=rngs)
        self.attention = attention
        make = functools.partial(DecoderLayer, config, lora, dtype=dtype, param_dtype=param_dtype, attention=attention,
                                 attention_block=attention_block)
        if scan_layers:
            @nnx.split_rngs(splits=config.num_hidden_layers)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs: nnx.Rngs) -> DecoderLayer:
                return make(rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([make(rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = _rms_norm(config.hidden_size, config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)

    def __call__(self, embeds: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                 cache: KVCache | None = None, dropout_key: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states `[B, T, hidden]` of `embeds [B, T, hidden]`, and the updated cache.

        positions: M-RoPE positions `[3, B, T]`; attention_mask: `[B, T]`, 1 for real tokens.
        With a cache the tokens go to slots `[cache.index, cache.index + T)` and attend to the
        cache; `dropout_key` enables LoRA dropout.
        """
        cfg = self.config
        b, t, _ = embeds.shape
        if positions.shape != (3, b, t) or attention_mask.shape != (b, t):
            raise ValueError(f"positions {positions.shape} / attention_mask {attention_mask.shape} do not fit "
                             f"a batch of shape {(b, t)}: expected (3, {b}, {t}) and ({b}, {t})")
        h = constrain(embeds, ("batch", "length", "embed"))
        cos, sin = mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
        valid = attention_mask.astype(bool)
        if cache is None:
            index, key_valid, key_slots = None, valid, jnp.arange(t)
        else:
            index = cache.index
            if cache.mask.shape[0] != b:
                raise ValueError(f"cache holds a batch of {cache.mask.shape[0]}, inputs have {b} rows")
            key_valid = jax.lax.dynamic_update_slice(cache.mask, valid, (0, index))
            key_slots = jnp.arange(cache.mask.shape[1])
        dense = None
        if self.attention == "dense":
            query_slots = jnp.arange(t) + (0 if index is None else index)
            dense = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]
            dense = dense[:, None]  # [B, 1, T, S], broadcast over heads
        mask = Visibility(dense, valid, None if cache is None else cache.mask)

        step = _remat_layer if self.remat else DecoderLayer.__call__
        n = cfg.num_hidden_layers
        keys = None if dropout_key is None else jax.random.split(dropout_key, n)
        kv = None if cache is None else (cache.k, cache.v)
        if self.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry, None, None, None, 0, None, 0), out_axes=nnx.Carry)
            def run(layer, carry, cos, sin, mask, layer_id, index, key):
                h, kv = carry
                return step(layer, h, cos, sin, mask, kv, layer_id, index, key)

            h, kv = run(self.layers, (h, kv), cos, sin, mask, jnp.arange(n), index, keys)
        else:
            for i, layer in enumerate(self.layers):
                h, kv = step(layer, h, cos, sin, mask, kv, i, index, None if keys is None else keys[i])
        h = self.norm(h)
        if cache is None:
            return h, None
        return h, KVCache(k=constrain(kv[0], CACHE_AXES.k), v=constrain(kv[1], CACHE_AXES.v), mask=key_valid,
                          index=index + t)


def repeat_cache(cache: KVCache, n: int) -> KVCache:
    """Every row repeated `n` times (row b becomes rows b*n .. b*n + n-1): G samples share one
    prefill. The copies keep the cache's logical sharding (`CACHE_AXES`)."""
    return KVCache(k=constrain(jnp.repeat(cache.k, n, axis=1), CACHE_AXES.k),
                   v=constrain(jnp.repeat(cache.v, n, axis=1), CACHE_AXES.v),
                   mask=constrain(jnp.repeat(cache.mask, n, axis=0), CACHE_AXES.mask), index=cache.index)
