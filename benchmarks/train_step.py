"""GRPO update time of jaxbiqa against TRL, on CPU, on the same small text-only Qwen2.

TRL side: `GRPOTrainer._compute_loss` (its chunked log-prob head, the clipped loss with the k3 KL)
+ `backward()` + gradient clipping + `torch.optim.AdamW.step()` on a transformers
`Qwen2ForCausalLM` in float32. jaxbiqa side: one call of the jitted `UpdateStep` (forward, chunked
log-probs, loss, gradient, clip, AdamW, non-finite guard) on a Qwen2.5-VL decoder holding the same
weights; text-only inputs make the two models the same function. Both take the same batch (B
completions of C tokens after unpadded prompts of P tokens, old and reference log-probs given, as
with num_iterations > 1). Each is timed after warm-up (compilation excluded), median of interleaved
repetitions. Needs torch and trl (the `parity` extra).

    .venv/bin/python benchmarks/train_step.py [--repeats 5] [--batch 8] [--prompt 64] [--completion 192]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np
import torch
import trl
from common import median_seconds
from datasets import Dataset
from flax import nnx
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from jaxbiqa.config import GRPOSection, OptimSection
from jaxbiqa.models.qwen2_5_vl import (
    ModelConfig,
    Qwen2_5_VLForConditionalGeneration,
    TextConfig,
    VisionConfig,
    trainable_filter,
)
from jaxbiqa.rl.step import UpdateStep, grpo_loss, pack_batch

VOCAB, PAD, EOS = 4096, 4003, 4004
TEXT = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, rms_norm_eps=1e-6)
GRPO = GRPOSection(beta=0.04, clip_epsilon=0.2)
LR = 1e-6


def torch_model(directory: str, seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(**TEXT, max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=PAD,
                         eos_token_id=EOS, bos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory)  # TRL builds its reference model from the path
    return Qwen2ForCausalLM.from_pretrained(directory, attn_implementation="sdpa").float()


def jax_model(reference: Qwen2ForCausalLM) -> Qwen2_5_VLForConditionalGeneration:
    """A jaxbiqa Qwen2.5-VL (tiny unused vision tower) whose decoder holds `reference`'s weights."""
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    config = ModelConfig(
        text=TextConfig(**TEXT, rope_theta=1e6, mrope_section=(head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16),
                        bos_token_id=EOS, eos_token_id=EOS),
        vision=VisionConfig(depth=1, hidden_size=16, intermediate_size=16, num_heads=2,
                            out_hidden_size=TEXT["hidden_size"], fullatt_block_indexes=(0,)),
        image_token_id=4000, video_token_id=4001, vision_start_token_id=4002, vision_end_token_id=4005)
    model = Qwen2_5_VLForConditionalGeneration(config, rngs=nnx.Rngs(0))
    weights = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    for path, variable in nnx.to_flat_state(nnx.state(model, trainable_filter(lora=False, freeze_vision=True))):
        leaf = path[-1]
        key = ".".join(map(str, path[:-1])) + (".bias" if leaf == "bias" else ".weight")
        value = weights[key].T if leaf == "kernel" else weights[key]
        variable.set_value(jax.numpy.asarray(value))
    return model


def trainer_for(model: Qwen2ForCausalLM, batch: int, completion: int) -> trl.GRPOTrainer:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3")),
        pad_token=f"t{PAD}", eos_token=f"t{EOS}", unk_token="t3")
    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_generations=4,
                          max_completion_length=completion, beta=GRPO.beta, epsilon=GRPO.clip_epsilon, loss_type="grpo",
                          learning_rate=LR, weight_decay=0.0, max_grad_norm=1.0, report_to="none", use_cpu=True,
                          bf16=False, gradient_checkpointing=False, use_bias_correction_kl=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["t5"] * batch}), processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by the HF training loop, which is not run here
    trainer.model.train()
    trainer.create_optimizer()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=192)
    args = parser.parse_args()
    b, p, c = args.batch, args.prompt, args.completion

    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(0, 3000, (b, p))
    completion_ids = rng.integers(0, 3000, (b, c))
    for row, stop in enumerate(rng.integers(c // 2, c + 1, b)):
        completion_ids[row, stop - 1:] = [EOS] + [PAD] * (c - stop)
    batch = pack_batch(prompt_ids, np.ones((b, p), np.int32), completion_ids, eos_ids=EOS)
    batch["advantages"] = rng.normal(size=b).astype(np.float32)

    with tempfile.TemporaryDirectory() as directory:
        reference = torch_model(directory)
        trainer = trainer_for(reference, b, c)
    model = jax_model(reference)
    step = UpdateStep(model, grpo_loss(GRPO), OptimSection(learning_rate=LR), 1000,
                     trainable=trainable_filter(lora=False, freeze_vision=True))
    state = step.init(model)
    logp = np.asarray(step.logprobs(state.params, state.frozen, batch))
    batch["old_logps"] = (logp + rng.normal(0, 0.05, logp.shape)).astype(np.float32)
    batch["ref_logps"] = (logp + rng.normal(0, 0.05, logp.shape)).astype(np.float32)
    inputs = dict(prompt_ids=torch.tensor(prompt_ids), prompt_mask=torch.ones(b, p, dtype=torch.long),
                  completion_ids=torch.tensor(completion_ids),
                  completion_mask=torch.tensor(batch["completion_mask"], dtype=torch.long),
                  advantages=torch.tensor(batch["advantages"]), old_per_token_logps=torch.tensor(batch["old_logps"]),
                  ref_per_token_logps=torch.tensor(batch["ref_logps"]))

    losses = {}

    def run_trl():
        trainer.optimizer.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()
        losses.setdefault("trl", loss.item())

    def run_jax():
        nonlocal state
        state, metrics = step(state, batch)
        losses.setdefault("jaxbiqa", float(jax.block_until_ready(metrics["loss"])))

    t_trl, t_jax = median_seconds([run_trl, run_jax], args.repeats, warmup=2)
    tokens = int(batch["attention_mask"].sum())
    print(f"GRPO update, batch {b} x ({p} prompt + {c} completion) tokens, {tokens} real tokens; text model "
          f"hidden {TEXT['hidden_size']}, {TEXT['num_hidden_layers']} layers, vocab {VOCAB}; CPU float32, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), trl {trl.__version__}, "
          f"jax {jax.__version__}")
    print(f"first-step loss: TRL {losses['trl']:.6f}, jaxbiqa {losses['jaxbiqa']:.6f}")
    print(f"TRL _compute_loss + backward + clip + AdamW: {t_trl * 1e3:8.1f} ms (median of {args.repeats})")
    print(f"jaxbiqa UpdateStep (jit):                     {t_jax * 1e3:8.1f} ms   "
          f"ratio TRL/jaxbiqa = {t_trl / t_jax:.2f}")


if __name__ == "__main__":
    main()
