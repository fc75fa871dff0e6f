"""The decoder's attention paths: "blocked" (online softmax over the filled key blocks) equals the
"dense" reference, and the compiled decode loop updates the cache in place."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, tiny_config
from flax import nnx

from jaxbiqa.models.qwen2_5_vl import init_cache, text_positions
from jaxbiqa.rollout import Sampler, SamplingSection
from jaxbiqa.rollout.sampler import _decode_program


@nnx.jit
def _step(model, ids, positions, mask, cache):
    out = model(ids, positions, mask, None, None, cache)
    return out.logits, out.cache


def _prompts(rng, rows: int, width: int):
    ids = rng.integers(0, 480, (rows, width))
    mask = np.ones((rows, width), np.int32)
    for row in range(rows):
        mask[row, :row * 3] = 0  # left padding of different lengths
    return ids, mask


@pytest.mark.parametrize("scan_layers", [pytest.param(False, marks=pytest.mark.slow), True])
def test_blocked_attention_equals_dense(scan_layers):
    """Prefill (its own 13 keys in blocks of 4, padded to 16) then decode steps whose cached keys
    span several blocks, the last one overlapping its neighbour (the cache has 22 slots): the
    logits of every real position and the cache's real slots equal the dense path's."""
    rng = np.random.default_rng(0)
    ids, mask = _prompts(rng, 3, 13)
    new = rng.integers(0, 480, (3, 6))
    results = {}
    for attention in ("dense", "blocked"):
        model = random_model(tiny_config(scan_layers=scan_layers, attention=attention, attention_block=4))
        cache = init_cache(model.config, 3, ids.shape[1] + new.shape[1] + 3)
        logits, cache = _step(model, jnp.asarray(ids), jnp.asarray(text_positions(mask)), jnp.asarray(mask), cache)
        steps = [np.asarray(logits)[mask.astype(bool)]]
        so_far = mask
        for j in range(new.shape[1]):
            so_far = np.concatenate([so_far, np.ones((3, 1), np.int32)], axis=1)
            logits, cache = _step(model, jnp.asarray(new[:, j:j + 1]), jnp.asarray(text_positions(so_far)[:, :, -1:]),
                                  jnp.ones((3, 1), jnp.int32), cache)
            steps.append(np.asarray(logits)[:, 0])
        results[attention] = steps, cache
    (dense, dense_cache), (blocked, blocked_cache) = results["dense"], results["blocked"]
    for want, got in zip(dense, blocked, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(blocked_cache.mask, dense_cache.mask)
    real = np.asarray(dense_cache.mask)  # padding slots hold padding queries' keys, which no query sees
    for got, want in ((blocked_cache.k, dense_cache.k), (blocked_cache.v, dense_cache.v)):
        np.testing.assert_allclose(np.moveaxis(np.asarray(got), 3, 2)[:, real],
                                   np.moveaxis(np.asarray(want), 3, 2)[:, real], atol=2e-5)


def test_blocked_training_forward_equals_dense():
    """No cache (the update's forward): a sequence longer than a block, and its gradient."""
    rng = np.random.default_rng(1)
    ids, mask = _prompts(rng, 2, 11)

    def loss(model):
        out = model(jnp.asarray(ids), jnp.asarray(text_positions(mask)), jnp.asarray(mask))
        return jnp.sum(jax.nn.log_softmax(out.logits)[..., 0] * mask)

    values = {}
    for attention in ("dense", "blocked"):
        model = random_model(tiny_config(attention=attention, attention_block=4))
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        values[attention] = value, jax.tree.leaves(nnx.state(grads))
    np.testing.assert_allclose(values["blocked"][0], values["dense"][0], rtol=1e-5)
    for a, b in zip(values["blocked"][1], values["dense"][1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


def _loop_bodies(hlo: str) -> dict[str, list[str]]:
    """The instruction lines of every computation reached from a while loop's body (nested loops and
    the fusions they call included), by computation name."""
    computations, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None and line.strip() != "}":
            current.append(line)
    reached, todo = set(), [m for lines in computations.values() for line in lines
                            for m in re.findall(r"body=%?([\w.\-]+)", line)]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += [m for line in computations[name]
                     for m in re.findall(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)", line)]
    return {name: computations[name] for name in reached}


def _cache_traffic(attention: str) -> tuple[list[str], list[str]]:
    """(copies of a whole cache array, reads of a whole layer of it) inside the compiled decode loop."""
    model = random_model(tiny_config(scan_layers=True, attention=attention, attention_block=8))
    sampler = Sampler(SamplingSection(max_new_tokens=24, greedy=True, eos_token_ids=(), pad_token_id=0))
    ids, mask = _prompts(np.random.default_rng(2), 3, 13)
    prefilled = sampler.prefill(model, sampler.prepare(model, ids, mask))
    layers, rows, heads, slots, dim = prefilled.cache.k.shape
    graphdef, state = nnx.split(model)
    hlo = _decode_program.lower(graphdef, state, prefilled.cache, prefilled.logits, prefilled.next_position,
                                jax.random.key(0), sampler.stops, sampler.spec).compile().as_text()
    whole = rf"f32\[{layers},{rows},{heads},{slots},{dim}\]"
    layer = rf"f32\[(?:1,)?{rows},{heads},{slots},{dim}\]"
    lines = [line for body in _loop_bodies(hlo).values() for line in body]
    copies = [line for line in lines if re.search(rf"= {whole}\S* copy\(", line)]
    reads = [line for line in lines if re.search(rf"= {layer}\S* (?:dynamic-slice|fusion|copy)\(", line)]
    return copies, reads


def test_decode_loop_updates_the_cache_in_place():
    """The compiled decode loop (blocked attention) neither copies the stacked cache nor reads a
    whole layer of it: each step writes its slot in place and reads key blocks. The dense
    reference does read whole layers (so the check can tell them apart)."""
    copies, reads = _cache_traffic("blocked")
    assert not copies, copies
    assert not reads, reads
    _, dense_reads = _cache_traffic("dense")
    assert dense_reads
