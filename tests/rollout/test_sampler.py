"""The compiled sampler on a tiny random Qwen2.5-VL: cached greedy decoding equals a no-cache
re-forward reference, log-probs equal a full forward pass, group sampling shares one prefill,
EOS ids and stop strings end rows, equal keys give equal tokens, and a bucket compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rollout_helpers import PAD, TOY_VOCAB, image_prompts, shared_model, tiny_config, toy_decode

from jaxbiqa.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from jaxbiqa.rollout import SamplingSection, Sampler, generate
from jaxbiqa.rollout.sampler import _decode_program, _prefill_program
from jaxbiqa.sharding import make_mesh, state_shardings

N = 20
NEVER = 10_000  # an EOS id outside the vocabulary: rows run to the budget
BUCKETS = (24, 48)
SAMPLED = dict(temperature=0.8, top_k=20, top_p=0.9)


def config(**changes) -> SamplingSection:
    return SamplingSection(**{"max_new_tokens": N, "eos_token_ids": (NEVER,), "pad_token_id": PAD,
                             "prompt_buckets": BUCKETS, **changes})


@pytest.fixture(scope="module")
def model():
    return shared_model()


@pytest.fixture(scope="module")
def inputs():
    """Three left-padded prompts of different lengths; rows 0 and 2 with an image, row 1 text only."""
    return image_prompts(3, seed=0, image_rows=(0, 2))


@pytest.fixture(scope="module")
def text_inputs():
    return image_prompts(3, seed=1, image_rows=())


def run(model, inputs, key=0, vocab=None, **changes):
    sampler = Sampler(config(**changes), vocab)
    return jax.device_get(sampler(model, sampler.prepare(model, *inputs), jax.random.key(key)))


def padded(ids, mask, tokens, width):
    """Prompt (left-padded to `width`) + generated tokens, as one batch; tokens all valid."""
    pad = width - ids.shape[1]
    ids = np.concatenate([np.full((len(ids), pad), PAD), ids, tokens], 1)
    mask = np.concatenate([np.zeros((len(ids), pad), int), mask, np.ones_like(tokens)], 1)
    return ids, mask


def reference_greedy(model, ids, mask, pixels, grid, n):
    """No cache: each step re-runs the whole sequence (right-padded to a fixed width) and takes the argmax."""
    t = BUCKETS[0]
    seq, seq_mask = padded(ids, mask, np.full((len(ids), n), PAD), t)
    seq_mask[:, t:] = 0
    for j in range(n):
        logits = np.asarray(model.forward(seq, seq_mask, pixels, grid))
        seq[:, t + j] = logits[:, t + j - 1].argmax(-1)
        seq_mask[:, t + j] = 1
    return seq[:, t:]


@pytest.fixture(scope="module")
def greedy(model, inputs):
    return run(model, inputs, greedy=True).tokens


@pytest.fixture(scope="module")
def text_greedy(model, text_inputs):
    return run(model, text_inputs, greedy=True).tokens


def test_greedy_equals_no_cache_reference(model, inputs, greedy):
    np.testing.assert_array_equal(greedy, reference_greedy(model, *inputs, N))


def test_logprobs_equal_a_full_forward_pass(model, inputs):
    """Sampled with temperature / top-k / top-p, scored by the raw policy."""
    ids, mask, pixels, grid = inputs
    out = run(model, inputs, key=3, **SAMPLED)
    assert (out.lengths == N).all() and not out.finished.any()
    seq, seq_mask = padded(ids, mask, out.tokens, BUCKETS[0])
    logp = np.asarray(jax.nn.log_softmax(model.forward(seq, seq_mask, pixels, grid), axis=-1))
    t = BUCKETS[0]
    expected = np.take_along_axis(logp[:, t - 1:-1], out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-5, rtol=0)


def test_equal_keys_give_equal_tokens(model, inputs):
    a, b, c = (run(model, inputs, key=k, **SAMPLED).tokens for k in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_group_sampling_shares_one_prefill(model, inputs, greedy):
    ids, mask, pixels, grid = inputs
    shared = Sampler(config(num_samples=2, **SAMPLED))
    prompts = shared.prepare(model, *inputs)
    prefilled = shared.prefill(model, prompts)
    single = Sampler(config(**SAMPLED)).prefill(model, prompts)
    assert (prefilled.cache.k.shape[1], prefilled.cache.k.shape[3]) == (6, BUCKETS[0] + N)
    np.testing.assert_array_equal(np.asarray(prefilled.logits), np.repeat(np.asarray(single.logits), 2, 0))
    np.testing.assert_array_equal(np.asarray(prefilled.cache.k), np.repeat(np.asarray(single.cache.k), 2, 1))
    tokens = np.asarray(shared.decode(model, prefilled, jax.random.key(1)).tokens)
    assert all((tokens[2 * b] != tokens[2 * b + 1]).any() for b in range(3)), "samples of a group are copies"

    # the same rows prefilled one by one (prompts and images repeated) sample the same tokens
    each = (np.repeat(ids, 2, 0), np.repeat(mask, 2, 0),
            np.concatenate([pixels[:24], pixels[:24], pixels[24:], pixels[24:]]), np.repeat(grid, 2, 0))
    np.testing.assert_array_equal(run(model, each, key=1, **SAMPLED).tokens, tokens)
    np.testing.assert_array_equal(run(model, inputs, num_samples=2, greedy=True).tokens, np.repeat(greedy, 2, 0))


def test_eos_ends_rows(model, text_inputs, text_greedy):
    eos = int(text_greedy[1, 4])
    out = run(model, text_inputs, greedy=True, eos_token_ids=(eos, NEVER))
    for row in range(3):
        hits = np.flatnonzero(text_greedy[row] == eos)
        n = hits[0] + 1 if len(hits) else N
        assert out.lengths[row] == n and out.finished[row] == bool(len(hits))
        np.testing.assert_array_equal(out.tokens[row, :n], text_greedy[row, :n])
        assert (out.tokens[row, n:] == PAD).all() and (out.logprobs[row, n:] == 0).all()
        assert (out.logprobs[row, :n] < 0).all()


def test_stop_string_ends_rows_whatever_the_tokens(model, text_inputs, text_greedy):
    """A stop string ends a row at the token that completes it in the decoded text."""
    stop = toy_decode(text_greedy[0])[6:8]
    out = run(model, text_inputs, vocab=TOY_VOCAB, greedy=True, stop_strings=(stop,))
    for row in range(3):
        ends = [j for j in range(N) if stop in toy_decode(text_greedy[row, :j + 1])]
        n = ends[0] + 1 if ends else N
        assert out.lengths[row] == n and out.finished[row] == bool(ends), row
        np.testing.assert_array_equal(out.tokens[row, :n], text_greedy[row, :n])
    assert out.finished[0]
    with pytest.raises(ValueError, match="token bytes"):
        Sampler(config(stop_strings=("x",)))


def test_same_bucket_does_not_recompile(model, text_inputs):
    sampler = Sampler(config(**SAMPLED))
    first = sampler.prepare(model, *text_inputs)
    sampler(model, first, jax.random.key(0))
    sizes = _prefill_program._cache_size(), _decode_program._cache_size()
    second = sampler.prepare(model, *image_prompts(3, seed=2, image_rows=()))  # other tokens and lengths
    assert second.length == first.length == BUCKETS[0] and not np.array_equal(second.input_ids, first.input_ids)
    sampler(model, second, jax.random.key(1))
    assert (_prefill_program._cache_size(), _decode_program._cache_size()) == sizes
    ids, mask, _, _ = text_inputs
    longer = sampler.prepare(model, np.concatenate([ids, np.full((3, 30), 7)], 1),
                             np.concatenate([mask, np.ones((3, 30), int)], 1))
    assert longer.length == BUCKETS[1]
    sampler(model, longer, jax.random.key(2))
    assert (_prefill_program._cache_size(), _decode_program._cache_size()) == (sizes[0] + 1, sizes[1] + 1)


def test_bfloat16_cache_and_no_full_logits(model, text_inputs):
    sampler = Sampler(config(cache_dtype="bfloat16", **SAMPLED))
    prompts = sampler.prepare(model, *text_inputs)
    b, t = prompts.input_ids.shape
    vocab = model.config.text.vocab_size
    graphdef, state = nnx.split(model)
    hlo = _prefill_program.lower(graphdef, state, prompts, N, 1, "bfloat16").as_text()
    assert f"{b}x{t}x{vocab}xf32" not in hlo, "prefill builds [B, T, vocab] logits"
    prefilled = sampler.prefill(model, prompts)
    assert prefilled.cache.k.dtype == jnp.bfloat16 and prefilled.cache.k.shape[3] == t + N
    assert prefilled.logits.shape == (b, vocab)
    out = sampler.decode(model, prefilled, jax.random.key(0))
    assert np.isfinite(np.asarray(out.logprobs)).all() and (np.asarray(out.lengths) == N).all()


def test_generate_has_transformers_arguments(model, inputs, greedy):
    ids, mask, pixels, grid = inputs
    tokens = generate(model, ids, mask, pixels, grid, max_new_tokens=N, eos_token_id=NEVER, pad_token_id=PAD,
                      prompt_buckets=BUCKETS)
    np.testing.assert_array_equal(tokens, greedy)
    eos = int(greedy[0, 2])
    out = generate(model, ids, mask, pixels, grid, max_new_tokens=N, eos_token_id=[eos], pad_token_id=PAD,
                   do_sample=True, num_return_sequences=2, seed=4, return_dict_in_generate=True,
                   prompt_buckets=BUCKETS, **SAMPLED)
    assert out.sequences.shape[0] == 6 and out.sequences.shape[1] == out.lengths.max() <= N
    assert out.logprobs.shape == out.sequences.shape
    assert ((out.sequences == eos).any(1) == out.finished).all()
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, ids, mask, pixels, grid, stop_strings="</answer>")


def test_mesh_gives_the_same_tokens_as_one_device(model, inputs):
    """Parameters sharded by the rules table on a 2x2x2 mesh (batch over data and fsdp)."""
    sampler = Sampler(config(num_samples=2, **SAMPLED))
    single = run(model, inputs, key=9, num_samples=2, **SAMPLED)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh)))
        out = sampler(sharded, sampler.prepare(sharded, *inputs), jax.random.key(9))
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out.tokens), single.tokens)
    np.testing.assert_allclose(np.asarray(out.logprobs), single.logprobs, atol=1e-5, rtol=0)


def test_scanned_rematerialised_layers_give_the_same_tokens(model, text_inputs, text_greedy):
    """The 7B options (one scanned layer body, remat) inside the decode loop; same weights, same tokens."""
    scanned = nnx.eval_shape(lambda: Qwen2_5_VLForConditionalGeneration(
        tiny_config(scan_layers=True, remat=True), rngs=nnx.Rngs(0)))
    unrolled = dict(nnx.to_flat_state(nnx.state(model)))
    for path, variable in nnx.to_flat_state(nnx.state(scanned)):
        if path[:2] == ("model", "layers"):  # stacked: the unrolled layers' parameters along a new axis
            layers = model.config.text.num_hidden_layers
            value = jnp.stack([unrolled[path[:2] + (i,) + path[2:]].get_value() for i in range(layers)])
        else:
            value = unrolled[path].get_value()
        variable.set_value(value)
    np.testing.assert_array_equal(run(scanned, text_inputs, greedy=True).tokens, text_greedy)
