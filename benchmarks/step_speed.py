"""Speed and memory traffic of a multiscale step against optax baselines.

Times jitted, donated training steps (``optax.apply_updates`` included) on
float32 pytrees, round-robin in one process, and reports medians, ratios to
``optax.sgd(momentum=0.9)`` and achieved bandwidth against a measured
``a * x + y`` bandwidth on the same machine.

Minimal traffic per parameter (float32 bytes): SGD reads u, w and writes w
(3 arrays); momentum and multiscale with k decaying subweights read u, w and
the state and write w and the state (5 and 2k + 3 arrays); Adam 7; with
bfloat16 subweights (``multiscale_k*_bf16``) the state moves half the bytes,
k + 3 float32-array equivalents. XLA's own
plan moves more (``bytes accessed`` of the compiled step, also reported):
without multi-output fusion on CPU, every updated state array is written by
one loop and read again by the loop that updates the params (momentum 6,
multiscale 4k + 3 arrays). The Bayesian multiscale learner
(``bayesian_k*``, scalar-output form: the extra argument ``jacobian`` is a
params-shaped pytree) needs two passes, a reduction over the whole network
for the innovation variance S (reading J and the k variances) and then the
update (reading u, J, w, k means and k variances, writing w and the state):
5k + 5 arrays. With a covariance of rank L (``bayesian_k*_rank*``,
diag(D) - U U^T, k(L + 2) state arrays) the reduction
also reads the kL rows of U, and the update reads and writes them:
k(3L + 5) + 5 arrays (the truncation's Gram matrix of the extended factor
is a further reduction over U, counted in XLA's figure but not here).

Every row also reports the optimizer state's size in float32 arrays per
parameter (``state_arrays_per_param``, from ``optimizer.init``).

All optimizers' params and states are held at once (round robin): with
the low-rank rows that is about 162 float32 arrays per parameter, 32 GB at
5e7 parameters. ``results/step_speed.json`` records its command.

End to end (``--end-to-end``): forward, backward(s) and update of a
classifier on a batch of B examples (``--batches``, default 1, 16 and 64;
inputs ``(steps, B, ...)``, labels ``(steps, B)``), jitted, a
``jax.lax.scan`` of steps per timing, round-robin within each (model, B),
medians. Adam minimises the *summed* cross-entropy of the batch (the
gradient ``categorical_observation`` returns, whose Bayesian observation is
of the whole batch: N = B C Jacobian rows with ``'exact'``, 1 + B with
``'sampled'``, B with ``'empirical'``). Beside it, ``bayesian_multiscale``
with k decaying subweights (diagonal belief) observing through
``categorical_observation``. At B = 1: k = 1, 4 and 8 with each ``fisher``
mode, and a ``draw`` row (the forward pass and the one categorical draw of
``'sampled'`` alone, nothing learned). At B > 1 only k = 1 with
``'sampled'`` and ``'exact'`` (``BATCHED_LEARNERS``): the full cross
product would more than double the run for rows no goal names. Every
combination listed runs (``'exact'`` at B = 64 on ``wide`` included: 640
Jacobian rows of about 10^6 params, 2.8 GB each copy); none is skipped.
Three models (``MODEL_DESCRIPTIONS``, param counts from their inits): an
MLP 64-48-10, the CNN of ``online_digits.py`` and ``wide``, an MLP
64-1000-1000-10 of about 10^6 params. Each timing scans
``--scan-steps // (d * isqrt(B))`` steps (at least 1; d =
``SCAN_STEP_DIVISORS[model]``, 1 for the small models and 50 for ``wide``):
few steps where one step is long, the same count for every learner of a
(model, B); each timing starts after a 0.2 s pause. On the project's
2-core CPU ``'exact'`` at B = 64 on ``wide`` is the slowest row (tens of
seconds a step; ``results/step_speed_fisher.json``) and the process
peaked near 15 GB resident.
Written to ``results/step_speed_fisher.json``.

Shares: each Adam and Bayesian step is also timed without its update, in
the same round robin: Adam's gradient alone, and the Bayesian observation
alone (``categorical_observation``'s forward and backward passes; each
fisher mode's once, shared by every k). Their outputs are summed and 0
times the sum is added to the params (as the ``draw`` row consumes its
draw), so XLA cannot drop them; that costs one read of each array. Rows
carry ``backward_us_per_step`` (that time), ``backward_share`` (it over the
whole step's time, capped at 1: two runs timed apart, so noise can put the
part above the whole where the update is tiny) and ``filter_share`` (1 -
``backward_share``, the filter's share) on the Bayesian rows,
``update_share`` (the same for Adam's update) on Adam's.

Usage::

  python -m benchmarks.step_speed            # 1e6, 1e7, 5e7 parameters
  python -m benchmarks.step_speed --sizes 1e6 --rounds 5 --out scratch
  python -m benchmarks.step_speed --end-to-end --rounds 5  # classifier rows
  python -m benchmarks.step_speed --end-to-end --models mlp --batches 1

Rows (one schema, ``benchmarks/harness.py``): ``n<size>/axpy`` (the
bandwidth reference) and ``n<size>/<optimizer>``; with ``--end-to-end``,
``<model>/b<B>/<learner>`` (``mlp/b1/adam``,
``wide/b16/bayesian_k1_sampled``, ...).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import multiscale_optax as mso
from benchmarks import _digits as digits
from benchmarks import harness

NUM_LEAVES = 4
FISHER_MODES = ('exact', 'sampled', 'empirical')
END_TO_END_SUBWEIGHTS = (1, 4, 8)
END_TO_END_BATCHES = (1, 16, 64)
# The learners at batches above 1 (at batch 1: every k and fisher mode).
BATCHED_LEARNERS = ('adam', 'bayesian_k1_sampled', 'bayesian_k1_exact')
# A timing scans --scan-steps // (divisor * isqrt(batch)) steps.
SCAN_STEP_DIVISORS = {'mlp': 1, 'cnn': 1, 'wide': 50}
WIDE_HIDDEN = 1000
# Ranks of the low-rank Bayesian rows (k = 1 and 4 subweights each).
BAYES_RANKS = (1, 5, 10)
SETTLE_SECONDS = 0.2


def _mlp_64_48_init(key: jax.Array) -> dict:
  first, second = jax.random.split(key)
  return {'hidden': digits.dense_init(first, 64, 48),
          'out': digits.dense_init(second, 48, digits.NUM_CLASSES)}


def _wide_mlp_init(key: jax.Array) -> dict:
  first, second, third = jax.random.split(key, 3)
  return {'hidden1': digits.dense_init(first, 64, WIDE_HIDDEN),
          'hidden2': digits.dense_init(second, WIDE_HIDDEN, WIDE_HIDDEN),
          'out': digits.dense_init(third, WIDE_HIDDEN, digits.NUM_CLASSES)}


def _wide_mlp_apply(params: dict, images: jax.Array) -> jax.Array:
  hidden = images
  for layer in ('hidden1', 'hidden2'):
    hidden = jax.nn.relu(hidden @ params[layer]['w'] + params[layer]['b'])
  return hidden @ params['out']['w'] + params['out']['b']


def _param_count(init_fn) -> int:
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  return sum(leaf.size for leaf in jax.tree.leaves(shapes))


# The end-to-end models: name -> (init, apply, architecture).
END_TO_END_MODELS = {
    'mlp': (_mlp_64_48_init, digits.mlp_apply, 'MLP 64-48-10 (ReLU)'),
    'cnn': (digits.cnn_init, digits.cnn_apply,
            '_digits.cnn_apply (3x3 conv 4, 3x3 conv stride 2 8, linear)'),
    'wide': (_wide_mlp_init, _wide_mlp_apply,
             f'MLP 64-{WIDE_HIDDEN}-{WIDE_HIDDEN}-10 (ReLU)'),
}
MODEL_PARAMS = {model: _param_count(init_fn)
                for model, (init_fn, _, _) in END_TO_END_MODELS.items()}
MODEL_DESCRIPTIONS = {
    model: f'{architecture}, {MODEL_PARAMS[model]:,} params'
    for model, (_, _, architecture) in END_TO_END_MODELS.items()}


def _pytree(size: int, value: float) -> dict:
  leaf_size = size // NUM_LEAVES
  return {
      f'leaf{index}': jnp.full((leaf_size,), value, jnp.float32)
      for index in range(NUM_LEAVES)
  }


def _multiscale_with(
    num_decaying: int, state_dtype: jnp.dtype | None = None
) -> optax.GradientTransformation:
  timescales = mso.log_spaced_timescales(10.0, 1e4, num_decaying)
  decays = mso.decays_from_timescales(timescales)
  rates = 0.01 * timescales ** -0.5
  return mso.multiscale(
      [0.001, *rates.tolist()], [1.0, *decays.tolist()],
      state_dtype=state_dtype)


def _optimizers() -> dict[str, tuple[optax.GradientTransformation, int]]:
  """Name -> (optimizer, minimal float32 arrays moved per parameter)."""
  optimizers = {
      'sgd': (optax.sgd(0.01), 3),
      'sgd_momentum_0.9': (optax.sgd(0.01, momentum=0.9), 5),
      'adam': (optax.adam(0.01), 7),
  }
  for num_decaying in (1, 2, 4, 8):
    optimizers[f'multiscale_k{num_decaying}'] = (
        _multiscale_with(num_decaying), 2 * num_decaying + 3)
  for num_decaying in (4, 8):
    # bfloat16 subweights: each read or write moves half a float32 array.
    optimizers[f'multiscale_k{num_decaying}_bf16'] = (
        _multiscale_with(num_decaying, jnp.bfloat16), num_decaying + 3)
  for num in (1, 4):
    # Reads u, J, w and 2k state arrays, writes w and 2k state arrays, plus
    # one earlier pass over J and the k variances for the reduction S.
    optimizers[f'bayesian_k{num}'] = (_bayesian_with(num), 5 * num + 5)
    # A timescale of 1 (decay e^-1 < 1/2) among the subweights.
    optimizers[f'bayesian_k{num}_tau1'] = (
        _bayesian_with(num, shortest=1.0), 5 * num + 5)
    for rank in BAYES_RANKS:
      optimizers[f'bayesian_k{num}_rank{rank}'] = (
          _bayesian_with(num, rank), num * (3 * rank + 5) + 5)
    # A learned prior also reads the k sensitivities T_i in the reduction
    # (for H T) and reads and writes them in the update: 3k more arrays;
    # per weight, the log scale and its four statistics (read and written):
    # 10 more.
    optimizers[f'bayesian_k{num}_learned'] = (
        _bayesian_with(num, learn_prior=True), 8 * num + 5)
    optimizers[f'bayesian_k{num}_learned_per_weight'] = (
        _bayesian_with(num, learn_prior='per_weight'), 8 * num + 15)
  return optimizers


def _bayesian_with(num: int, rank: int | None = None,
                   learn_prior: bool | str = False, shortest: float = 10.0,
                   ) -> optax.GradientTransformation:
  timescales = mso.log_spaced_timescales(shortest, 1e4, num)
  decays = mso.decays_from_timescales(timescales)
  return mso.bayesian_multiscale(
      decays.tolist(), (1e-6 * (1.0 - decays**2)).tolist(), 1.0, rank=rank,
      learn_prior=learn_prior, learn_noise_variance=bool(learn_prior))


def _make_step(optimizer, needs_jacobian=False):
  def step(params, state, grads):
    # The Bayesian learner also needs d prediction / d params; a linear
    # model's Jacobian is its input, here the same pytree as the gradient
    # (and a residual, read by a learned prior).
    extra = ({'jacobian': grads, 'residual': jnp.asarray(0.5, jnp.float32)}
             if needs_jacobian else {})
    updates, state = optimizer.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def _axpy_seconds(size: int, rounds: int) -> float:
  axpy = jax.jit(lambda x, y: 0.5 * x + y, donate_argnums=(1,))
  x = jnp.ones((size,), jnp.float32)
  y = jnp.ones((size,), jnp.float32)
  y = axpy(x, y).block_until_ready()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    y = axpy(x, y).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _compiled_runners(optimizers: dict, size: int, grads: dict,
                      ) -> tuple[dict, dict, dict]:
  """Per optimizer: [step, params, state] after one warm-up step, XLA's
  bytes accessed by the compiled step, and the state's size in float32
  arrays per parameter."""
  runners = {}
  xla_bytes = {}
  state_arrays = {}
  for name, (optimizer, _) in optimizers.items():
    params = _pytree(size, 1.0)
    state = optimizer.init(params)
    state_arrays[name] = sum(
        leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)
    ) / (4 * size)
    step = _make_step(optimizer, name.startswith('bayesian'))
    compiled = step.lower(params, state, grads).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_bytes[name] = float(cost['bytes accessed'])
    params, state = step(params, state, grads)  # warm up
    jax.block_until_ready(params)
    runners[name] = [step, params, state]
  return runners, xla_bytes, state_arrays


def _round_robin(runners: dict, grads: dict, size: int, rounds: int,
                 ) -> tuple[dict[str, list[float]], list[float]]:
  """Seconds per step of every runner and of the axpy reference, per round.

  The rank rows' long, matrix-product-bound steps leave the next step
  slower on a small machine (worker threads still spinning after the
  products): each round runs them last, after the axpy reference, and the
  next round starts after a pause and untimed copies. The other steps run
  back to back, as in a training loop.
  """
  times: dict[str, list[float]] = {name: [] for name in runners}
  axpy_times = []
  ranked = [name for name in runners if '_rank' in name]
  others = [name for name in runners if name not in ranked]

  def time_steps(names: list[str]) -> None:
    for name in names:
      step, params, state = runners[name]
      start = time.perf_counter()
      params, state = step(params, state, grads)
      jax.block_until_ready(params)
      times[name].append(time.perf_counter() - start)
      runners[name][1], runners[name][2] = params, state

  for round_index in range(rounds):
    print(f'  size {size:.0e}: round {round_index + 1}/{rounds}',
          end='\r', flush=True)
    time.sleep(SETTLE_SECONDS)
    _axpy_seconds(size, 5)  # untimed: a buffer after the last round's rows
    time_steps(others)
    axpy_times.append(_axpy_seconds(size, 1))
    time_steps(ranked)
  print()
  return times, axpy_times


def measure(size: int, rounds: int, only: list[str] | None = None) -> dict:
  """Round-robin medians for every optimizer (or those in ``only``, with
  the momentum reference and Adam) at one parameter count."""
  optimizers = _optimizers()
  if only:
    unknown = set(only) - set(optimizers)
    if unknown:
      raise ValueError(f'unknown optimizers {sorted(unknown)}')
    keep = {'sgd_momentum_0.9', 'adam', *only}
    optimizers = {name: value for name, value in optimizers.items()
                  if name in keep}
  grads = _pytree(size, 1e-3)
  runners, xla_bytes, state_arrays = _compiled_runners(
      optimizers, size, grads)
  times, axpy_times = _round_robin(runners, grads, size, rounds)
  axpy_seconds = statistics.median(axpy_times)
  axpy_bandwidth = 3 * 4 * size / axpy_seconds / 1e9
  reference = statistics.median(times['sgd_momentum_0.9'])
  adam = statistics.median(times['adam'])
  rows = {}
  for name, (_, arrays) in optimizers.items():
    seconds = statistics.median(times[name])
    bandwidth = arrays * 4 * size / seconds / 1e9
    xla_bandwidth = xla_bytes[name] / seconds / 1e9
    rows[name] = {
        'median_ms': 1e3 * seconds,
        'ratio_to_momentum': seconds / reference,
        'ratio_to_adam': seconds / adam,
        'state_arrays_per_param': state_arrays[name],
        'minimal_arrays_moved': arrays,
        'achieved_GBps': bandwidth,
        'fraction_of_axpy_bandwidth': bandwidth / axpy_bandwidth,
        'xla_arrays_moved': xla_bytes[name] / (4 * size),
        'xla_traffic_GBps': xla_bandwidth,
        'xla_traffic_fraction_of_axpy': xla_bandwidth / axpy_bandwidth,
    }
  return {'size': size, 'axpy_GBps': axpy_bandwidth, 'optimizers': rows}


def _runner_setup(name: str) -> tuple[optax.GradientTransformation,
                                      str | None, bool]:
  """``(optimizer, fisher, updates)`` of an end-to-end runner.

  ``name`` is a learner (``adam``, ``draw``, ``bayesian_k<k>_<fisher>``) or
  the part of one that its shares time (:func:`_backward_part`):
  ``gradient`` (Adam's) or ``observation_<fisher>``. ``fisher`` is ``None``
  for Adam's gradient and ``'draw'`` for the draw alone; ``updates`` says
  whether the step applies the optimizer's update.
  """
  if name == 'draw':
    # The sampled observation's randomness alone: the key split every
    # learner here makes, and one categorical draw per example.
    return optax.identity(), 'draw', False
  if name == 'adam':
    return optax.adam(1e-2), None, True
  if name == 'gradient':
    return optax.identity(), None, False
  if name.startswith('observation_'):
    return optax.identity(), name.removeprefix('observation_'), False
  _, subweights, fisher = name.split('_')
  return _bayesian_with(int(subweights[1:])), fisher, True


def _backward_part(learner: str) -> str | None:
  """The runner that times ``learner``'s step without its update."""
  if learner == 'adam':
    return 'gradient'
  if learner.startswith('bayesian'):
    return f'observation_{learner.split("_")[2]}'
  return None


def _consumed(params: dict, outputs) -> dict:
  """``params`` plus 0 times the sum of every array in ``outputs``: the step
  then depends on them, so XLA cannot drop them (one read each)."""
  total = sum(jnp.sum(leaf.astype(jnp.float32))
              for leaf in jax.tree.leaves(outputs))
  return jax.tree.map(lambda leaf: leaf + total.astype(leaf.dtype) * 0.0,
                      params)


def _end_to_end_step(name: str, apply_fn):
  """``(optimizer, step)``: the scan body of runner ``name``."""
  optimizer, fisher, updates_params = _runner_setup(name)

  def summed_loss(params, inputs, labels):
    return optax.softmax_cross_entropy_with_integer_labels(
        apply_fn(params, inputs), labels).sum()

  def step(carry, example):
    params, state, key = carry
    inputs, labels = example
    key, draw = jax.random.split(key)
    if fisher == 'draw':
      drawn = jax.random.categorical(draw, apply_fn(params, inputs), axis=-1)
      return (_consumed(params, drawn), state, key), None
    if fisher is None:
      grads, extra = jax.grad(summed_loss)(params, inputs, labels), {}
    else:
      _, grads, extra = mso.categorical_observation(
          apply_fn, params, inputs, labels, fisher=fisher,
          key=draw if fisher == 'sampled' else None)
    if not updates_params:
      return (_consumed(params, (grads, extra)), state, key), None
    updates, state = optimizer.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state, key), None

  return optimizer, step


def _example_batches(model: str, steps: int, batch: int,
                     ) -> tuple[jax.Array, jax.Array]:
  """Random inputs ``(steps, batch, ...)`` and labels ``(steps, batch)``."""
  images = jax.random.normal(jax.random.key(1), (steps, batch, 8, 8))
  if model == 'cnn':
    patches = digits.cnn_inputs(images.reshape(-1, 8, 8))
    inputs = patches.reshape(steps, batch, *patches.shape[1:])
  else:
    inputs = images.reshape(steps, batch, 64)
  labels = jax.random.randint(
      jax.random.key(2), (steps, batch), 0, digits.NUM_CLASSES)
  return inputs, labels


def _end_to_end_run(name: str, model: str, batch: int, steps: int):
  """A jitted scan of ``steps`` steps of runner ``name`` on ``model``, each
  on a batch of ``batch`` examples; with its initial params and state."""
  init_fn, apply_fn, _ = END_TO_END_MODELS[model]
  optimizer, step = _end_to_end_step(name, apply_fn)
  examples = _example_batches(model, steps, batch)

  def run(params, state):
    (params, state, _), _ = jax.lax.scan(
        step, (params, state, jax.random.key(3)), examples)
    return params, state

  params = init_fn(jax.random.key(0))
  return jax.jit(run, donate_argnums=(0, 1)), params, optimizer.init(params)


def end_to_end_learners(batch: int) -> list[str]:
  """The learners timed at ``batch`` examples per step."""
  if batch > 1:
    return list(BATCHED_LEARNERS)
  return ['adam', 'draw'] + [
      f'bayesian_k{num}_{fisher}' for num in END_TO_END_SUBWEIGHTS
      for fisher in FISHER_MODES]


def scan_steps(base: int, model: str, batch: int) -> int:
  """Steps per timing at ``batch`` on ``model`` (module docstring)."""
  return max(1, base // (SCAN_STEP_DIVISORS[model] * math.isqrt(batch)))


def _seconds_per_step(names: list[str], model: str, batch: int,
                      steps: int, rounds: int) -> dict[str, float]:
  """Per runner, the median over round-robin rounds of its seconds/step.

  Each timing starts after a pause: a long, matrix-product-bound step
  (``'exact'`` at large batches) otherwise slows the next runner's (worker
  threads still spinning), as in :func:`_round_robin`.
  """
  runners = {}
  for name in names:
    run, params, state = _end_to_end_run(name, model, batch, steps)
    params, state = jax.block_until_ready(run(params, state))  # compile
    runners[name] = [run, params, state]
  times: dict[str, list[float]] = {name: [] for name in names}
  for round_index in range(rounds):
    print(f'  {model} b{batch}: round {round_index + 1}/{rounds}',
          end='\r', flush=True)
    for name, runner in runners.items():
      run, params, state = runner
      time.sleep(SETTLE_SECONDS)
      start = time.perf_counter()
      runner[1], runner[2] = jax.block_until_ready(run(params, state))
      times[name].append((time.perf_counter() - start) / steps)
  print()
  return {name: statistics.median(values) for name, values in times.items()}


def _learner_records(learners: list[str], seconds: dict[str, float],
                     steps: int) -> dict[str, dict]:
  """Per learner, its step time, ratio to Adam's and shares."""
  records = {}
  for learner in learners:
    record = {'scan_steps': steps,
              'median_us_per_step': 1e6 * seconds[learner],
              'ratio_to_adam': seconds[learner] / seconds['adam']}
    part = _backward_part(learner)
    if part is not None:
      share = min(1.0, seconds[part] / seconds[learner])
      rest = 'update_share' if learner == 'adam' else 'filter_share'
      record.update({'backward_us_per_step': 1e6 * seconds[part],
                     'backward_share': share, rest: 1.0 - share})
    records[learner] = record
  return records


def end_to_end(rounds: int, base_steps: int,
               models: tuple[str, ...] = tuple(END_TO_END_MODELS),
               batches: tuple[int, ...] = END_TO_END_BATCHES) -> dict:
  """``{model: {batch: {learner: record}}}``: seconds per step, medians of
  round-robin rounds within each (model, batch), and shares."""
  results: dict[str, dict[int, dict]] = {}
  for model in models:
    results[model] = {}
    for batch in batches:
      learners = end_to_end_learners(batch)
      parts = [part for part in dict.fromkeys(map(_backward_part, learners))
               if part is not None]
      steps = scan_steps(base_steps, model, batch)
      seconds = _seconds_per_step(learners + parts, model, batch, steps,
                                  rounds)
      results[model][batch] = _learner_records(learners, seconds, steps)
      _print_group(model, batch, results[model][batch])
  return results


def _print_group(model: str, batch: int, records: dict[str, dict]) -> None:
  print(f'{"row":<32}{"us/step":>12}{"x Adam":>8}{"backward":>10}'
        f'{"steps":>7}')
  for learner, record in records.items():
    share = record.get('backward_share')
    print(f'{f"{model}/b{batch}/{learner}":<32}'
          f'{record["median_us_per_step"]:>12.1f}'
          f'{record["ratio_to_adam"]:>8.2f}'
          f'{"" if share is None else f"{share:.0%}":>10}'
          f'{record["scan_steps"]:>7d}')


def _machine_other(load_before: tuple[float, float, float]) -> dict:
  """What the harness's machine block has no slot for."""
  device = jax.devices()[0]
  return {
      'host': platform.node(),
      'device': {'platform': device.platform, 'kind': device.device_kind,
                 'count': jax.device_count()},
      'load_average_before': list(load_before),
      'load_average_after': list(os.getloadavg()),
      'note': 'other jobs may share the machine: see the load averages',
  }


def end_to_end_rows(results: dict) -> list[dict]:
  """The results rows of :func:`end_to_end`'s
  ``{model: {batch: {learner: record}}}``."""
  return [{'id': f'{model}/b{batch}/{learner}',
           'label': {'adam': 'Adam', 'draw': 'forward pass and one draw'}.get(
               learner, learner),
           'model': model, 'batch': batch, 'learner': learner,
           'model_description': MODEL_DESCRIPTIONS[model],
           'params': MODEL_PARAMS[model], **record}
          for model, by_batch in results.items()
          for batch, by_learner in by_batch.items()
          for learner, record in by_learner.items()]


def optimizer_rows(results: list[dict]) -> list[dict]:
  """The results rows of :func:`measure`'s blocks, one list."""
  rows = []
  for block in results:
    size = block['size']
    rows.append({'id': f'n{size}/axpy', 'label': 'axpy (x + a*y)',
                 'size': size, 'optimizer': None,
                 'axpy_GBps': block['axpy_GBps']})
    rows += [{'id': f'n{size}/{name}', 'label': name, 'size': size,
              'optimizer': name, **record}
             for name, record in block['optimizers'].items()]
  return rows


def _end_to_end_config(args) -> dict:
  """The results file's config block of an end-to-end run."""
  return {
      'end_to_end': True, 'rounds': args.rounds,
      'scan_steps': args.scan_steps,
      'scan_steps_per_timing': {
          model: {batch: scan_steps(args.scan_steps, model, batch)
                  for batch in args.batches} for model in args.models},
      'batches': args.batches,
      'learners': {batch: end_to_end_learners(batch)
                   for batch in args.batches},
      'adam_loss': 'cross-entropy summed over the batch',
      'prior': 'bayesian_multiscale, k decaying subweights with timescales '
               'log-spaced 10..1e4, diagonal belief (the rows above)',
      'models': {model: MODEL_DESCRIPTIONS[model] for model in args.models}}


def main(argv=None) -> dict:
  parser = harness.parser(__doc__)
  parser.add_argument('--sizes', type=float, nargs='+',
                      default=[1e6, 1e7, 5e7])
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument('--end-to-end', action='store_true',
                      help='the classifier rows (module docstring) instead '
                           'of the optimizer-only rows')
  parser.add_argument('--scan-steps', type=int, default=200,
                      help='end to end: steps per timing at batch 1 on the '
                           'small models (fewer on larger batches and wide)')
  parser.add_argument('--batches', type=int, nargs='+',
                      default=list(END_TO_END_BATCHES),
                      help='end to end: examples per step')
  parser.add_argument('--models', nargs='+', default=list(END_TO_END_MODELS),
                      choices=list(END_TO_END_MODELS),
                      help='end to end: the classifiers')
  parser.add_argument('--only', default=None,
                      help='comma-separated optimizer rows to time (with '
                           'the momentum reference and Adam): what else is '
                           "held in memory changes a step's time")
  args = parser.parse_args(argv)
  if args.plot_only:
    parser.error('step_speed draws no figure (its rows are tables)')
  if args.end_to_end and args.only:
    parser.error('--only picks optimizer-only rows; end to end, pick with '
                 '--models and --batches')
  stem = args.out or ('step_speed_fisher' if args.end_to_end
                      else 'step_speed')
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), '
        f'{jax.device_count()} device(s), jax {jax.__version__}')
  load_before = os.getloadavg()
  started = time.perf_counter()
  if args.end_to_end:
    rows = end_to_end_rows(end_to_end(
        args.rounds, args.scan_steps, tuple(args.models), tuple(args.batches)))
    config = _end_to_end_config(args)
  else:
    results = []
    for size in args.sizes:
      result = measure(int(size), args.rounds,
                       args.only.split(',') if args.only else None)
      results.append(result)
      _print_block(result)
    rows = optimizer_rows(results)
    config = {'rounds': args.rounds,
              'sizes': [int(size) for size in args.sizes],
              'only': args.only.split(',') if args.only else None}
  document = harness.results_document(
      'step_speed', config=config, rows=rows,
      seconds=time.perf_counter() - started,
      machine_other=_machine_other(load_before))
  print(f'\nwrote {harness.write_results(stem, document)}')
  return document


def _print_block(result: dict) -> None:
  print(f'\n{result["size"]:.0e} float32 parameters; a*x+y bandwidth '
        f'{result["axpy_GBps"]:.1f} GB/s')
  print(f'{"optimizer":<20}{"median ms":>11}{"x momentum":>12}{"x adam":>8}'
        f'{"min arrays":>12}{"GB/s":>8}{"of axpy":>9}'
        f'{"XLA arrays":>12}{"GB/s":>8}{"of axpy":>9}{"state":>7}')
  for name, row in result['optimizers'].items():
    print(f'{name:<20}{row["median_ms"]:>11.2f}'
          f'{row["ratio_to_momentum"]:>12.3f}{row["ratio_to_adam"]:>8.2f}'
          f'{row["minimal_arrays_moved"]:>12d}{row["achieved_GBps"]:>8.1f}'
          f'{row["fraction_of_axpy_bandwidth"]:>9.0%}'
          f'{row["xla_arrays_moved"]:>12.1f}{row["xla_traffic_GBps"]:>8.1f}'
          f'{row["xla_traffic_fraction_of_axpy"]:>9.0%}'
          f'{row["state_arrays_per_param"]:>7.1f}')


if __name__ == '__main__':
  main()
