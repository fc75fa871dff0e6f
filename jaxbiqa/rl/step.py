"""The jitted update: one `jax.jit` per step over the split model state, shared by GRPO and SFT.

`UpdateStep` splits the model once (`nnx.split`) into the trainable parameters (a filter, e.g.
`lora.trainable_filter`) and the frozen rest, and compiles `(trainable, opt_state, counters, frozen,
batch) -> new state, metrics`, which `nnx.merge`s the model inside. The batch is split into
micro-batches that a `lax.scan` runs one after another, accumulating the gradient of each
micro-batch's loss *sum* and its denominator; dividing once at the end makes any micro-batching
give the full-batch update. Then: global-norm clip, AdamW with a schedule, and a guard that keeps
parameters and optimizer state unchanged (and counts the step as skipped) when the loss or the
gradient is not finite. The trainable state and optimizer state are donated; on a mesh the outputs
are pinned to the inputs' shardings, so the second step reuses the first step's compilation.

Batches are dicts of arrays with the rows on axis 0 (`positions [3, B, T]`: axis 1). The GRPO
batch (see `grpo_loss`): `input_ids [B, T]` (prompt then completion), `attention_mask [B, T]`,
`positions [3, B, T]`, `completion_mask [B, C]` (the last C tokens are the completion),
`advantages [B]`, optional `old_logps` / `ref_logps [B, C]`, optional `image_features [B, n, hidden]`
or `pixel_values [B, p, patch_dim]` (with `vision_plan` of one micro-batch's images in `unsplit`).
`optim.micro_batch_size` counts rows of the global batch; on a mesh each micro-batch should still
fill the data-parallel devices (micro_batch_size divisible by data x fsdp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxbiqa.config import Config, GRPOSection, OptimSection
from jaxbiqa.distributed import Placement
from jaxbiqa.models.qwen2_5_vl import text_positions, token_logprobs
from jaxbiqa.rl.losses import LossTerms, completion_mask, finish, grpo_objective
from jaxbiqa.sharding import DEFAULT_RULES, LogicalRules, constrain, sharding_for, state_shardings

Batch = Mapping[str, Any]
# loss_fn(model, micro_batch, dropout_key or None) -> LossTerms (a differentiable sum and its denominator)
LossFn = Callable[[nnx.Module, Batch, jax.Array | None], LossTerms]

ROW_AXIS = {"positions": 1}  # batch entries whose rows are not on axis 0


class TrainState(NamedTuple):
    params: nnx.State        # the trainable parameters (donated to each step)
    frozen: nnx.State        # everything else: read by the step, never updated or donated
    opt_state: Any           # optax state of `params`
    step: jax.Array          # int32, steps taken (skipped ones included)
    skipped: jax.Array       # int32, steps whose update was skipped for a non-finite loss or gradient


# ---------------------------------------------------------------- optimizer

def make_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Learning rate by applied update: optional linear warm-up, then linear / cosine decay or constant."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = min(optim.warmup_steps, total_steps)
    lr, end = optim.learning_rate, optim.end_learning_rate
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "linear":
        main = optax.linear_schedule(lr, end, decay_steps)
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif optim.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {optim.schedule!r}; expected linear, cosine or constant")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm (unless `max_grad_norm` is None) then AdamW on the schedule."""
    adamw = optax.adamw(make_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=optim.weight_decay)
    if optim.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(optim.max_grad_norm), adamw)


# ---------------------------------------------------------------- micro-batches

def _row_axis(key: str) -> int:
    return ROW_AXIS.get(key, 0)


def num_rows(batch: Batch) -> int:
    sizes = {k: jnp.shape(v)[_row_axis(k)] for k, v in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch entries disagree on the number of rows: {sizes}")
    return next(iter(sizes.values()))


def split_micro_batches(batch: Batch, n: int) -> dict[str, jax.Array]:
    """Each entry `[..., B, ...]` -> `[n, ..., B/n, ...]`, micro-batch m holding rows m, m+n, m+2n, ...

    Interleaving keeps every micro-batch spread over all devices when the rows are sharded in blocks.
    """
    out = {}
    for key, x in batch.items():
        axis = _row_axis(key)
        rows = x.shape[axis]
        x = x.reshape(*x.shape[:axis], rows // n, n, *x.shape[axis + 1:])
        x = jnp.moveaxis(x, axis + 1, 0)
        names = [None] * x.ndim
        names[axis + 1] = "batch"
        out[key] = constrain(x, names)
    return out


def merge_micro_batches(x: jax.Array) -> jax.Array:
    """Inverse of `split_micro_batches` for a row-leading `[n, B/n, ...]` result."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def _micro_count(batch: Batch, micro_batch_size: int) -> int:
    rows = num_rows(batch)
    if not micro_batch_size or micro_batch_size >= rows:
        return 1
    if rows % micro_batch_size:
        raise ValueError(f"batch of {rows} rows does not split into micro-batches of {micro_batch_size} "
                         f"(optim.micro_batch_size must divide the batch)")
    return rows // micro_batch_size


def dropout_key(config: Config, key: jax.Array) -> jax.Array | None:
    """`key` when the model has LoRA dropout to draw, else None."""
    return key if config.model.lora_rank > 0 and config.model.lora_dropout > 0 else None


# ---------------------------------------------------------------- the step

class UpdateStep:
    """A jitted optimizer step of `loss_fn` for `model`'s graph; call it as `state, metrics = step(state, batch, key)`.

    `trainable` picks the parameters that get gradients (default every `nnx.Param`); `mesh` places
    the state by `rules` and pins the step's output shardings. `total_steps` sizes the schedule.
    Metrics (device scalars): loss, grad_norm (before clipping), learning_rate, skipped_update (1 when
    this step's update was skipped), skipped_updates (the total so far), denominator (of the loss), and
    the loss function's metrics as means.
    """

    def __init__(self, model: nnx.Module, loss_fn: LossFn, optim: OptimSection, total_steps: int, *,
                 trainable: nnx.filterlib.Filter = nnx.Param, mesh: Mesh | None = None,
                 rules: LogicalRules = DEFAULT_RULES, logprob_chunk_size: int = 256):
        self.loss_fn = loss_fn
        self.optim = optim
        self.trainable = trainable
        self.mesh = mesh
        self.rules = rules
        self.logprob_chunk_size = logprob_chunk_size
        self.schedule = make_schedule(optim, total_steps)
        self.tx = make_optimizer(optim, total_steps)
        self.graphdef, params, frozen = nnx.split(model, trainable, ...)
        if not jax.tree.leaves(params):
            raise ValueError(f"no parameter of the model matches the trainable filter {trainable!r}")
        self._shardings = None if mesh is None else self._state_shardings(params, frozen)
        out_shardings = None if mesh is None else (self._mutable(self._shardings), None)
        self._update = jax.jit(self._update_fn, donate_argnums=(0,), static_argnames=("micro",),
                               out_shardings=out_shardings)
        self._logprobs = jax.jit(self._logprobs_fn, static_argnames=("micro",))

    # -- state

    def _state_shardings(self, params: nnx.State, frozen: nnx.State) -> TrainState:
        params_sh = state_shardings(params, self.mesh, self.rules)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        abstract_opt = jax.eval_shape(self.tx.init, params)
        opt_sh = optax.tree_map_params(self.tx, lambda _, s: s, abstract_opt, params_sh,
                                       transform_non_params=lambda _: replicated)
        return TrainState(params_sh, state_shardings(frozen, self.mesh, self.rules), opt_sh, replicated, replicated)

    @staticmethod
    def _mutable(state: TrainState) -> tuple:
        return state.params, state.opt_state, state.step, state.skipped

    def init(self, model: nnx.Module, *, copy: bool = False) -> TrainState:
        """The initial state of `model` (same graph as the one the step was built for), placed on the mesh.

        The state takes the model's arrays; the first step donates the trainable ones, after which
        `model` is unusable (use `self.model(state)`). `copy=True` copies them instead and leaves
        `model` intact, at the cost of a second copy of the trainable parameters.
        """
        graphdef, params, frozen = nnx.split(model, self.trainable, ...)
        if graphdef != self.graphdef:
            raise ValueError("UpdateStep.init: the model's structure differs from the one the step was built for")
        if copy:
            params = jax.tree.map(jnp.copy, params)
        if self.mesh is None:  # two distinct counters: both are donated
            return TrainState(params, frozen, jax.jit(self.tx.init)(params), jnp.zeros((), jnp.int32),
                              jnp.zeros((), jnp.int32))
        sh = self._shardings
        params, frozen = jax.device_put(params, sh.params), jax.device_put(frozen, sh.frozen)
        with jax.set_mesh(self.mesh):
            opt_state = jax.jit(self.tx.init, out_shardings=sh.opt_state)(params)
        return TrainState(params, frozen, opt_state, jax.device_put(jnp.zeros((), jnp.int32), sh.step),
                          jax.device_put(jnp.zeros((), jnp.int32), sh.skipped))

    def abstract_state(self, model: nnx.Module) -> TrainState:
        """`TrainState` of `jax.ShapeDtypeStruct`s with this step's shardings: the target to restore a
        checkpoint into. `model` may be abstract (`nnx.eval_shape`)."""
        _, params, frozen = nnx.split(model, self.trainable, ...)
        abstract = jax.eval_shape(lambda p, f: TrainState(p, f, self.tx.init(p), jnp.zeros((), jnp.int32),
                                                          jnp.zeros((), jnp.int32)), params, frozen)
        if self.mesh is None:
            return abstract
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self._shardings)

    def model(self, state: TrainState) -> nnx.Module:
        """The model with `state`'s parameters (shares their arrays; invalid after the next step donates them)."""
        return nnx.merge(self.graphdef, state.params, state.frozen)

    @property
    def compile_count(self) -> int:
        """How many times the update has been compiled (1 after any number of same-shaped steps)."""
        return self._update._cache_size()

    # -- update

    def __call__(self, state: TrainState, batch: Batch, key: jax.Array | None = None,
                 unsplit: Batch | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on `batch` (micro-batched by `optim.micro_batch_size`); donates `state`'s
        trainable parameters and optimizer state. `key` drives dropout (None: none); `unsplit` entries
        (e.g. a `vision_plan`) go unsplit to every micro-batch."""
        batch = self._place(batch)
        micro = _micro_count(batch, self.optim.micro_batch_size)
        with self._mesh_context():
            (params, opt_state, step, skipped), metrics = self._update(
                self._mutable(state), state.frozen, batch, dict(unsplit or {}), key, micro=micro)
        return TrainState(params, state.frozen, opt_state, step, skipped), metrics

    def _update_fn(self, mutable, frozen, batch, unsplit, key, micro):
        params, opt_state, step, skipped = mutable
        grads, total, denominator, metric_sums = self._accumulate(params, frozen, batch, unsplit, key, micro)
        scale = jnp.where(denominator > 0, 1.0 / jnp.maximum(denominator, 1e-12), 0.0)
        grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)
        loss = total * scale
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (denominator > 0)
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(ok, new, old))
        new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
        applied = step - skipped
        skipped = skipped + (~ok).astype(jnp.int32)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": self.schedule(applied),
                   "skipped_update": (~ok).astype(jnp.int32), "skipped_updates": skipped, "denominator": denominator,
                   **{name: finish(pair) for name, pair in metric_sums.items()}}
        return (new_params, new_opt_state, step + 1, skipped), metrics

    def _accumulate(self, params, frozen, batch, unsplit, key, micro):
        """Sum over micro-batches of (grad of loss sum, loss sum, denominator, metric (sum, count) pairs)."""

        def loss_of(p, micro_batch, k):
            terms = self.loss_fn(nnx.merge(self.graphdef, p, frozen), {**micro_batch, **unsplit}, k)
            return terms.total, (terms.denominator, terms.metrics)

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)
        parts = split_micro_batches(batch, micro)
        keys = None if key is None else jax.random.split(key, micro)
        first = jax.tree.map(lambda x: x[0], parts)
        _, (den_shape, metric_shape) = jax.eval_shape(loss_of, params, first, None if keys is None else keys[0])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (den_shape, metric_shape))
        carry0 = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params), jnp.zeros((), jnp.float32), *zeros)

        def body(carry, xs):
            g_acc, t_acc, d_acc, m_acc = carry
            micro_batch, k = xs
            (total, (den, metrics)), grads = grad_fn(params, micro_batch, k)
            add = functools.partial(jax.tree.map, lambda a, b: a + jnp.asarray(b, jnp.float32))
            return (add(g_acc, grads), t_acc + total, d_acc + den, add(m_acc, metrics)), None

        (grads, total, denominator, metric_sums), _ = jax.lax.scan(body, carry0, (parts, keys))
        return grads, total, denominator, metric_sums

    # -- log-probs without gradient (old policy, reference)

    def reference_params(self, state: TrainState) -> nnx.State:
        """Trainable-shaped parameters of the reference policy (the model as it is now, unadapted).

        LoRA adapters are replaced by zeros (the base model: adapter-sized memory only); other
        trainable parameters are copied, so later donated steps leave the copy intact. The frozen
        part is shared with `state`. Use with `logprobs(ref_params, state.frozen, batch)`.
        """
        adapters, rest = state.params.split(nnx.LoRAParam, ...)
        return nnx.merge_state(jax.tree.map(jnp.zeros_like, adapters), jax.tree.map(jnp.copy, rest))

    def logprobs(self, params: nnx.State, frozen: nnx.State, batch: Batch, unsplit: Batch | None = None,
                 micro_batch_size: int | None = None) -> jax.Array:
        """float32 `[B, C]` log-probs of the completion tokens of a GRPO-shaped batch under
        (`params`, `frozen`), in micro-batches (default `optim.micro_batch_size`), no dropout."""
        size = self.optim.micro_batch_size if micro_batch_size is None else micro_batch_size
        batch = self._place(batch)
        micro = _micro_count(batch, size)
        with self._mesh_context():
            return self._logprobs(params, frozen, batch, dict(unsplit or {}), micro=micro)

    def _logprobs_fn(self, params, frozen, batch, unsplit, *, micro):
        # the state rides in the scan's carry: merged from closed-over arrays instead, a model with
        # scanned layers (nnx.scan) would see variables of another trace level and refuse them
        def one(state, micro_batch):
            model = nnx.merge(self.graphdef, *state)
            return state, completion_logprobs(model, {**micro_batch, **unsplit}, chunk_size=self.logprob_chunk_size)

        _, out = jax.lax.scan(one, (params, frozen), split_micro_batches(batch, micro))
        return constrain(merge_micro_batches(out), ("batch", None))

    # -- placement

    def _place(self, batch: Batch) -> dict[str, jax.Array]:
        """Batch arrays on the mesh, rows over the "batch" logical axis (unchanged without a mesh).

        With several processes, host (numpy) entries are this process's rows of the global batch.
        """
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        out = {}
        for key, value in batch.items():
            names = [None] * np.ndim(value)
            names[_row_axis(key)] = "batch"
            if jax.process_count() > 1 and not isinstance(value, jax.Array):
                shape = list(np.shape(value))
                shape[_row_axis(key)] *= jax.process_count()
                sharding = sharding_for(shape, names, self.mesh, self.rules)
                out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value), tuple(shape))
            else:
                out[key] = jax.device_put(value, sharding_for(np.shape(value), names, self.mesh, self.rules))
        return out

    def _mesh_context(self):
        return Placement(self.mesh, self.rules).scope()


# ---------------------------------------------------------------- GRPO and the completion log-probs

def completion_logprobs(model: nnx.Module, batch: Batch, *, chunk_size: int = 256, key: jax.Array | None = None,
                        return_entropy: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probs `[B, C]` (and entropies) of the last `C = completion_mask.shape[1]` tokens of `input_ids`.

    Runs the model for hidden states only and scores them with the chunked `token_logprobs`, so no
    `[B, T, vocab]` float32 tensor exists. Image inputs: `image_features [B, n, hidden]`, or
    `pixel_values [B, p, patch_dim]` with the micro-batch's `vision_plan`.
    """
    ids = batch["input_ids"]
    length, completion = ids.shape[1], batch["completion_mask"].shape[1]
    if not 0 < completion < length:
        raise ValueError(f"completion_mask covers {completion} tokens of input_ids' {length}: "
                         "need at least one prompt token and one completion token")
    features = batch.get("image_features")
    pixels = batch.get("pixel_values")
    out = model(ids, batch["positions"], batch["attention_mask"],
                pixel_values=None if pixels is None else pixels.reshape(-1, pixels.shape[-1]),
                vision_plan=batch.get("vision_plan"),
                image_features=None if features is None else features.reshape(-1, features.shape[-1]),
                compute_logits=False, dropout_key=key)
    hidden = out.hidden_states[:, length - completion - 1:length - 1]
    return token_logprobs(model, hidden, ids[:, length - completion:], chunk_size=chunk_size,
                          return_entropy=return_entropy)


def grpo_loss(options: GRPOSection) -> LossFn:
    """The `LossFn` of GRPO: completion log-probs (+ entropy), then `losses.grpo_objective`.

    Uses `old_logps` when the batch has them (num_iterations > 1), else the detached current
    log-probs; `ref_logps` when `options.beta > 0`.
    """

    def loss(model: nnx.Module, batch: Batch, key: jax.Array | None) -> LossTerms:
        logp, entropy = completion_logprobs(model, batch, chunk_size=options.logprob_chunk_size, key=key,
                                            return_entropy=True)
        return grpo_objective(logp, batch["completion_mask"], batch["advantages"], options,
                              old_logp=batch.get("old_logps"), ref_logp=batch.get("ref_logps"), entropy=entropy)

    return loss


# ---------------------------------------------------------------- host-side batch assembly

def pack_batch(prompt_ids: np.ndarray, prompt_mask: np.ndarray, completion_ids: np.ndarray, *,
               eos_ids: int | Sequence[int], completion_valid: np.ndarray | None = None,
               prompt_positions: np.ndarray | None = None, rope_deltas: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """The step's batch from left-padded prompts `[B, P]` and right-padded completions `[B, C]`.

    `completion_mask` keeps completion tokens up to and including the first EOS, and only where
    `completion_valid` (e.g. `arange(C) < lengths` of a sampler that also stops on strings); the
    attention mask is the prompt mask then the completion mask. Positions: text positions, or for
    prompts with images the prompt batch's `prompt_positions [3, B, P]` followed by completion
    positions from its `rope_deltas [B]` (index among valid tokens + delta, as the sampler decodes).
    Numpy in, numpy out (host batches); jax arrays in (e.g. traced in a jitted function), jax out.
    """
    xp = jnp if any(isinstance(a, jax.Array) for a in (prompt_ids, completion_ids)) else np
    prompt_ids, prompt_mask, completion_ids = map(xp.asarray, (prompt_ids, prompt_mask, completion_ids))
    if prompt_ids.shape != prompt_mask.shape or prompt_ids.ndim != 2 or completion_ids.ndim != 2 \
            or completion_ids.shape[0] != prompt_ids.shape[0]:
        raise ValueError(f"pack_batch: prompt_ids {prompt_ids.shape}, prompt_mask {prompt_mask.shape} and "
                         f"completion_ids {completion_ids.shape} must be [B, P], [B, P] and [B, C]")
    mask = completion_mask(completion_ids, eos_ids, completion_valid)
    ids = xp.concatenate([prompt_ids, completion_ids], axis=1).astype(xp.int32)
    attention = xp.concatenate([prompt_mask.astype(xp.int32), mask], axis=1)
    if (prompt_positions is None) != (rope_deltas is None):
        raise ValueError("pack_batch: prompt_positions and rope_deltas go together (a PromptBatch's fields)")
    if prompt_positions is None:
        positions = text_positions(attention)
    else:
        if np.shape(prompt_positions) != (3, *prompt_ids.shape):
            raise ValueError(f"pack_batch: prompt_positions of shape {np.shape(prompt_positions)}, "
                             f"expected {(3, *prompt_ids.shape)}")
        deltas = xp.asarray(rope_deltas).reshape(-1, 1)
        later = text_positions(attention, deltas)[:, :, prompt_ids.shape[1]:]
        positions = xp.concatenate([xp.asarray(prompt_positions), later], axis=2)
    return dict(input_ids=ids, attention_mask=attention, positions=positions.astype(xp.int32),
                completion_mask=mask)
