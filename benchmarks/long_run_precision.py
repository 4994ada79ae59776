r"""Float32 drift of a multiscale learner over a million steps.

Runs an online regression problem (a linear model tracking a target that
drifts at timescales from 10 to :math:`10^5` steps) with a multiscale learner
whose subweights have timescales 1, 10, ..., :math:`10^5` (plus a permanent
one), every variant fed the identical float32 data stream, in two modes:

* ``closed_loop``: the gradient of the loss at the current params (what
  training does; rounding perturbs the trajectory, and the loss pulls the
  params back). Variants: ``float32`` (params, gradients and state in
  float32), ``float32_scaled`` (the same with ``scaled_subweights=True``),
  ``float32_params`` (transformation in float64, params stored in float32).
* ``open_loop``: a fixed update stream that ignores the params, so nothing
  corrects the drift and each effect is seen alone. Variants:
  ``float32_transform`` (float32 updates, increments and state, params
  accumulated in float64: the transformation's own rounding),
  ``float32_transform_scaled`` (the same with ``scaled_subweights=True``),
  ``float32_params`` (transformation in float64, params stored in float32:
  the rounding of ``optax.apply_updates``, outside the transformation's
  control).

The reference is the same run in float64 throughout.

For each run it reports the largest relative drift from the reference, over
checkpoints every ``--chunk`` steps, of the params and of every subweight
(:math:`\max_t \|x_t - x^{64}_t\|_\infty / \|x^{64}_t\|_\infty`, with
subweights read by ``multiscale_optax.get_subweights``).

Usage::

  python -m benchmarks.long_run_precision            # 10^6 steps
  python -m benchmarks.long_run_precision --steps 100000

Writes ``benchmarks/results/long_run_precision.json``.

References:
  Jones, `Learning at Multiple Timescales
  <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eq. (1).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import harness

NUM_FEATURES = 16
BATCH = 8
TARGET_TIMESCALES = (1e1, 1e2, 1e3, 1e4, 1e5)


def make_optimizer(timescales, learning_rate, scaled):
  decays = [1.0, *mso.decays_from_timescales(timescales).tolist()]
  return mso.multiscale([learning_rate] * len(decays), decays,
                        scaled_subweights=scaled)


def data_step(latent, key):
  """One step of the float32 data stream: returns new latent, inputs, y."""
  rho = jnp.asarray(np.exp(-1.0 / np.asarray(TARGET_TIMESCALES)), jnp.float32)
  noise_key, input_key, target_key = jax.random.split(key, 3)
  latent = rho[:, None] * latent + jnp.sqrt(1.0 - rho[:, None] ** 2) * (
      jax.random.normal(noise_key, latent.shape, jnp.float32))
  inputs = jax.random.normal(input_key, (BATCH, NUM_FEATURES), jnp.float32)
  targets = inputs @ latent.sum(axis=0) + 0.1 * jax.random.normal(
      target_key, (BATCH,), jnp.float32)
  return latent, inputs, targets


def loss_fn(params, inputs, targets):
  return 0.5 * jnp.mean((inputs @ params['w'] + params['b'] - targets) ** 2)


def open_loop_gradients(params, inputs, targets):
  """A gradient stream that ignores the params: the data's own drift."""
  del params
  mean_target = jnp.mean(targets)
  return {'w': jnp.mean(inputs * mean_target, axis=0) + inputs[0],
          'b': mean_target}


def make_chunk(optimizer, param_dtype, transform_dtype, chunk, open_loop):
  """Returns a jitted function running ``chunk`` steps of one variant."""
  grad_fn = jax.grad(loss_fn)

  def step(carry, key):
    params, opt_state, latent = carry
    latent, inputs, targets = data_step(latent, key)
    if open_loop:
      # Computed in float32 so that every variant sees the same stream.
      grads = open_loop_gradients(params, inputs, targets)
    else:
      grads = grad_fn(
          params, inputs.astype(param_dtype), targets.astype(param_dtype))
    grads = optax.tree.cast(grads, transform_dtype)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, latent), None

  @jax.jit
  def run(carry, first_step, base_key):
    keys = jax.vmap(lambda t: jax.random.fold_in(base_key, t))(
        first_step + jnp.arange(chunk))
    carry, _ = jax.lax.scan(step, carry, keys)
    return carry

  return run


def subweight_values(params, opt_state):
  return [
      np.asarray(value['w'], np.float64)
      for value in mso.get_subweights(params, opt_state).values]


def relative(value, reference):
  return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def subweight_row(index: int, name: str) -> tuple[str, str]:
  """The row id and plain label of subweight ``name`` (``slow(1)``,
  ``tau=1e+02``)."""
  del index
  if name.startswith('slow'):
    return 'permanent', 'permanent part'
  tau = float(name.split('=')[1])
  return f'tau_{tau:g}', f'timescale {tau:g}'


# name: (params dtype, transformation dtype, scaled_subweights), per mode.
VARIANTS = {
    'closed_loop': {
        'float64': (jnp.float64, jnp.float64, False),
        'float32': (jnp.float32, jnp.float32, False),
        'float32_scaled': (jnp.float32, jnp.float32, True),
        'float32_params': (jnp.float32, jnp.float64, False),
    },
    'open_loop': {
        'float64': (jnp.float64, jnp.float64, False),
        'float32_transform': (jnp.float64, jnp.float32, False),
        'float32_transform_scaled': (jnp.float64, jnp.float32, True),
        'float32_params': (jnp.float32, jnp.float64, False),
    },
}


def run_mode(mode: str, timescales, args, start: float) -> dict[str, dict]:
  """The largest drift from the float64 run of every variant of ``mode``
  over ``args.steps`` steps, checked every ``args.chunk`` steps (float64
  must be enabled)."""
  variants = VARIANTS[mode]
  runs, carries = {}, {}
  for name, (param_dtype, transform_dtype, scaled) in variants.items():
    optimizer = make_optimizer(timescales, args.learning_rate, scaled)
    params = {'w': jnp.zeros(NUM_FEATURES, param_dtype),
              'b': jnp.zeros([], param_dtype)}
    # The state lives in the transformation's dtype, not the params'.
    state = optimizer.init(optax.tree.cast(params, transform_dtype))
    carries[name] = (params, state, jnp.zeros(
        (len(TARGET_TIMESCALES), NUM_FEATURES), jnp.float32))
    runs[name] = make_chunk(optimizer, param_dtype, transform_dtype,
                            args.chunk, mode == 'open_loop')
  drift = {name: {'params': 0.0, 'subweights': [0.0] * (len(timescales) + 1)}
           for name in variants if name != 'float64'}
  base_key = jax.random.key(args.seed)
  for first in range(0, args.steps, args.chunk):
    for name in variants:
      carries[name] = runs[name](carries[name], first, base_key)
    reference_params = np.asarray(carries['float64'][0]['w'], np.float64)
    reference_subweights = subweight_values(*carries['float64'][:2])
    for name, values in drift.items():
      params, state, _ = carries[name]
      values['params'] = max(values['params'], relative(
          np.asarray(params['w'], np.float64), reference_params))
      for index, (value, reference) in enumerate(zip(
          subweight_values(params, state), reference_subweights)):
        values['subweights'][index] = max(
            values['subweights'][index], relative(value, reference))
    worst = max(max(values['subweights']) for values in drift.values())
    print(f'  step {first + args.chunk:>9,d}/{args.steps:,d}  '
          f'{time.perf_counter() - start:6.1f} s  largest subweight drift '
          f'so far {worst:.2e}', flush=True)
  return drift


def result_rows(results: dict[str, dict], names: list[str]) -> list[dict]:
  """Prints the drift tables; one row for the params and one per
  subweight, a column per (mode, variant)."""
  for mode, drift in results.items():
    print(f'\n{mode}: max relative drift from float64')
    print(f'{"variant":<25} {"params":>9} '
          + ' '.join(f'{n:>9}' for n in names))
    for name, values in drift.items():
      print(f'{name:<25} {values["params"]:9.2e} ' + ' '.join(
          f'{v:9.2e}' for v in values['subweights']))
  columns = [(f'{mode}_{variant}', values)
             for mode, drift in results.items()
             for variant, values in drift.items()]
  rows = [{'id': 'params', 'label': 'params',
           **{column: values['params'] for column, values in columns}}]
  for index, name in enumerate(names):
    row_id, label = subweight_row(index, name)
    rows.append({'id': row_id, 'label': label, 'subweight': index,
                 **{column: values['subweights'][index]
                    for column, values in columns}})
  return rows


def main(argv=None):
  parser = harness.parser(__doc__)
  parser.add_argument('--steps', type=int, default=1_000_000)
  parser.add_argument('--chunk', type=int, default=50_000)
  parser.add_argument('--learning-rate', type=float, default=0.02)
  parser.add_argument('--longest-timescale', type=float, default=1e5)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  timescales = mso.log_spaced_timescales(
      1.0, args.longest_timescale,
      int(np.rint(np.log10(args.longest_timescale))) + 1)
  names = ['slow(1)'] + [f'tau={t:.0e}' for t in timescales]
  start = time.perf_counter()
  # The float64 reference and the float64 parts of the variants.
  with jax.enable_x64(True):
    results = {}
    for mode in VARIANTS:
      print(f'{mode}: gradients '
            + ('of the loss at the current params' if mode == 'closed_loop'
               else 'from a fixed float32 stream (no feedback)'))
      results[mode] = run_mode(mode, timescales, args, start)
  document = harness.results_document(
      'long_run_precision',
      config={'steps': args.steps, 'chunk': args.chunk,
              'learning_rate': args.learning_rate,
              'timescales': [float(t) for t in timescales]},
      rows=result_rows(results, names), seconds=time.perf_counter() - start)
  print(f"wrote {harness.write_results(args.out or 'long_run_precision', document)}")


if __name__ == '__main__':
  main()
