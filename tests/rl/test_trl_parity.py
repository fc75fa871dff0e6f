"""Parity with TRL: `GRPOTrainer._compute_loss` on a tiny text-only Qwen2 (PyTorch) and jaxbiqa's GRPO
loss on the same weights and inputs give the same loss, gradients and metrics; one optimizer step
(clip + AdamW) gives the same parameters."""

import tempfile

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_models import EOS, PAD, VOCAB, random_model, tiny_config

from jaxbiqa.config import GRPOSection, OptimSection
from jaxbiqa.models.qwen2_5_vl import trainable_filter
from jaxbiqa.rl.step import UpdateStep, grpo_loss, pack_batch

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
pytestmark = [pytest.mark.parity, pytest.mark.filterwarnings("ignore::FutureWarning")]

B, P, C, G = 8, 5, 7, 4
TEXT_ONLY = trainable_filter(lora=False, freeze_vision=True)
# jaxbiqa options <-> TRL loss_type
CASES = {
    "grpo": GRPOSection(beta=0.04, aggregation="seq_mean_token_mean"),
    "dr_grpo": GRPOSection(beta=0.0, aggregation="seq_sum", clip_epsilon_high=0.28),
    "bnpo": GRPOSection(beta=0.04, aggregation="token_mean"),
}


def _torch_name(path: tuple) -> tuple[str, bool]:
    """(Qwen2ForCausalLM state-dict key, whether to transpose) of a jaxbiqa text parameter path."""
    leaf = path[-1]
    name = ".".join(map(str, path[:-1]))
    suffix = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
    return f"{name}.{suffix}", leaf == "kernel"


@pytest.fixture(scope="module")
def models():
    """The jaxbiqa model and a transformers Qwen2ForCausalLM holding the same weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = random_model(tiny_config())
    text = model.config.text
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                         num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
                         num_key_value_heads=text.num_key_value_heads, rms_norm_eps=text.rms_norm_eps,
                         max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=PAD,
                         eos_token_id=EOS, bos_token_id=text.bos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta})
    torch_model = Qwen2ForCausalLM(config)
    weights = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, TEXT_ONLY)):
        key, transpose = _torch_name(path)
        value = np.asarray(variable.get_value())
        weights[key] = torch.tensor(value.T if transpose else value)
    missing, unexpected = torch_model.load_state_dict(weights, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    directory = tempfile.mkdtemp()
    torch_model.save_pretrained(directory)  # TRL builds its (unused here) reference model from the path
    return model, Qwen2ForCausalLM.from_pretrained(directory, attn_implementation="eager").float()


def _trainer(torch_model, loss_type: str, options: GRPOSection):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3")),
        pad_token=f"t{PAD}", eos_token=f"t{EOS}", unk_token="t3")
    args = trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B, num_generations=G, max_completion_length=C,
        beta=options.beta, epsilon=options.clip_epsilon, epsilon_high=options.clip_epsilon_high, loss_type=loss_type,
        learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0, report_to="none", use_cpu=True, bf16=False,
        gradient_accumulation_steps=1, logging_steps=1,
        use_bias_correction_kl=False)  # TRL's default multiplies the KL by the ratio; the authors' loss does not
    trainer = trl.GRPOTrainer(model=torch_model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["t5"] * B}),
                              processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by the HF training loop, which is not run here
    trainer.model.train()
    return trainer


@pytest.fixture(scope="module")
def scorer(models):
    """Completion log-probs of the jaxbiqa model (one compilation for the module)."""
    model = models[0]
    step = UpdateStep(model, grpo_loss(GRPOSection()), OptimSection(), 1, trainable=TEXT_ONLY)
    _, params, frozen = nnx.split(model, TEXT_ONLY, ...)
    return lambda batch: np.asarray(step.logprobs(params, frozen, batch))


def _batch(scorer, seed: int, with_old: bool):
    """Unpadded prompts (TRL's model counts positions from 0 on every row), completions ending at random EOS."""
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(3, VOCAB - 4, (B, P))
    completion_ids = rng.integers(3, VOCAB - 4, (B, C))
    for r in range(B):
        stop = rng.integers(1, C + 2)
        if stop <= C:
            completion_ids[r, stop - 1], completion_ids[r, stop:] = EOS, PAD
    batch = pack_batch(prompt_ids, np.ones((B, P), np.int32), completion_ids, eos_ids=EOS)
    batch["advantages"] = rng.normal(size=B).astype(np.float32)
    logp = scorer(batch)
    batch["ref_logps"] = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
    if with_old:
        batch["old_logps"] = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
    return batch, prompt_ids, completion_ids


def _torch_inputs(batch, prompt_ids, completion_ids, options):
    inputs = dict(prompt_ids=torch.tensor(prompt_ids), prompt_mask=torch.ones(B, P, dtype=torch.long),
                  completion_ids=torch.tensor(completion_ids),
                  completion_mask=torch.tensor(batch["completion_mask"], dtype=torch.long),
                  advantages=torch.tensor(batch["advantages"]))
    if options.beta > 0:
        inputs["ref_per_token_logps"] = torch.tensor(batch["ref_logps"])
    if "old_logps" in batch:
        inputs["old_per_token_logps"] = torch.tensor(batch["old_logps"])
    return inputs


@pytest.mark.parametrize("loss_type", list(CASES))
def test_loss_gradient_and_metrics_equal_trl(models, scorer, loss_type):
    model, torch_model = models
    options = CASES[loss_type]
    batch, prompt_ids, completion_ids = _batch(scorer, seed=len(loss_type), with_old=loss_type != "bnpo")
    trainer = _trainer(torch_model, loss_type, options)
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, _torch_inputs(batch, prompt_ids, completion_ids, options))
    loss.backward()
    torch_grads = {name: p.grad.numpy() for name, p in trainer.model.named_parameters()}

    graphdef, params, frozen = nnx.split(model, TEXT_ONLY, ...)
    if options.beta == 0:
        batch.pop("ref_logps")

    @jax.jit
    def loss_and_grad(params, batch):
        def mean(p):
            terms = grpo_loss(options)(nnx.merge(graphdef, p, frozen), batch, None)
            return terms.total / terms.denominator, terms.metrics
        return jax.value_and_grad(mean, has_aux=True)(params)

    (value, metrics), grads = loss_and_grad(params, batch)
    assert float(value) == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    compared = 0
    for path, g in nnx.to_flat_state(grads):
        key, transpose = _torch_name(path)
        expected = torch_grads[key].T if transpose else torch_grads[key]
        np.testing.assert_allclose(np.asarray(g.get_value()), expected, rtol=1e-4, atol=2e-6, err_msg=key)
        compared += 1
    assert compared == len(torch_grads)

    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    finish = {k: float(s / n) for k, (s, n) in metrics.items()}
    assert finish["entropy"] == pytest.approx(logged["entropy"], rel=1e-4)
    assert finish["clip_fraction"] == pytest.approx(logged["clip_ratio/region_mean"], abs=1e-6)
    if options.beta > 0:
        assert finish["kl"] == pytest.approx(logged["kl"], rel=1e-4)
    if loss_type != "bnpo":
        assert finish["clip_fraction"] > 0  # the old log-probs put some ratios outside the clip range


def test_one_update_equals_trl_with_torch_adamw(models, scorer):
    model, torch_model = models
    options = CASES["grpo"]
    batch, prompt_ids, completion_ids = _batch(scorer, seed=11, with_old=True)
    trainer = _trainer(torch_model, "grpo", options)
    trainer.create_optimizer()
    trainer.model.zero_grad()
    trainer._compute_loss(trainer.model, _torch_inputs(batch, prompt_ids, completion_ids, options)).backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    updated = {name: p.detach().numpy() for name, p in trainer.model.named_parameters()}

    step = UpdateStep(model, grpo_loss(options), OptimSection(learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0),
                     total_steps=10, trainable=TEXT_ONLY)
    state, metrics = step(step.init(model, copy=True), batch)
    assert int(metrics["skipped_update"]) == 0
    for path, variable in nnx.to_flat_state(state.params):
        key, transpose = _torch_name(path)
        expected = updated[key].T if transpose else updated[key]
        np.testing.assert_allclose(np.asarray(variable.get_value()), expected, rtol=0, atol=2e-6, err_msg=key)
