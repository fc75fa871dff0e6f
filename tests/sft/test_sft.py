"""SFT warm start: prompt tokens are masked, the loss is the completion tokens' mean NLL, and
training through the shared jitted step lowers it on a fixed batch."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbiqa.config import OptimSection
from jaxbiqa.models.qwen2_5_vl import trainable_filter
from jaxbiqa.processing import pad_rows
from jaxbiqa.rl.step import UpdateStep, pack_batch
from jaxbiqa.sft import sft_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rl"))
from tiny_models import EOS, PAD, random_model, tiny_config  # noqa: E402


def _examples(rows=8, seed=0):
    """Prompts of 2-5 tokens; each completion is the prompt reversed, then EOS (learnable by a tiny model)."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 40, rng.integers(2, 6)).tolist() for _ in range(rows)]
    completions = [p[::-1] + [EOS] for p in prompts]
    return prompts, completions


def sft_batch(prompts, completions, *, prompt_length, completion_length):
    """The trainer's text SFT layout: prompts left-padded, completions (ending with EOS) right-padded."""
    prompt_ids, prompt_mask = pad_rows(prompts, PAD, prompt_length)
    completion_ids, valid = pad_rows(completions, PAD, completion_length, left=False)
    return pack_batch(prompt_ids, prompt_mask, completion_ids, eos_ids=EOS, completion_valid=valid)


def test_batch_masks_prompt_and_padding():
    batch = sft_batch([[5, 6, 7], [8]], [[9, EOS], [10, 11, EOS]], prompt_length=4, completion_length=4)
    np.testing.assert_array_equal(batch["input_ids"], [[PAD, 5, 6, 7, 9, EOS, PAD, PAD],
                                                       [PAD, PAD, PAD, 8, 10, 11, EOS, PAD]])
    np.testing.assert_array_equal(batch["completion_mask"], [[1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(batch["positions"][0], [[0, 0, 1, 2, 3, 4, 0, 0], [0, 0, 0, 0, 1, 2, 3, 0]])


def test_loss_is_mean_nll_of_completion_tokens():
    model = random_model(tiny_config())
    batch = {k: jnp.asarray(v) for k, v in sft_batch(*_examples(4), prompt_length=5, completion_length=6).items()}

    @nnx.jit
    def both(model, batch):
        terms = sft_loss(chunk_size=4)(model, batch, None)
        logits = model(batch["input_ids"], batch["positions"], batch["attention_mask"]).logits
        return terms.total, terms.denominator, logits

    total, count, logits = both(model, batch)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["completion_mask"])
    nll = [-logp[b, t - 1, ids[b, t]] for b in range(4) for t in range(5, 11) if mask[b, t - 5]]
    assert float(count) == len(nll) == mask.sum()
    np.testing.assert_allclose(float(total / count), np.mean(nll), rtol=1e-5)


def test_sft_lowers_the_loss_on_a_fixed_batch():
    model = random_model(tiny_config(), scale=0.05)
    optim, steps = OptimSection(learning_rate=3e-3, schedule="constant", freeze_vision=True, micro_batch_size=4), 40
    step = UpdateStep(model, sft_loss(8), optim, steps, trainable=trainable_filter(lora=False, freeze_vision=True),
                     logprob_chunk_size=8)
    assert all(p[0] != "visual" for p, _ in nnx.to_flat_state(step.init(model, copy=True).params))
    batch = sft_batch(*_examples(8), prompt_length=5, completion_length=6)
    state = step.init(model)
    losses = []
    for i in range(steps):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert step.compile_count == 1 and int(state.skipped) == 0
    assert losses[0] > 4.0  # about log(96) at the start
    assert losses[-1] < 0.5 * losses[0], losses[::8]
