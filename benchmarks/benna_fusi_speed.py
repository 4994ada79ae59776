"""Speed of the Benna–Fusi modes and of a Benna–Fusi step vs its multiscale form.

Two measurements, both with compilation excluded and medians reported:

1. ``jax.jit(benna_fusi_modes)`` for chains of n = 8, 64 and 512 default
   variables (float64).
2. One jitted, donated training step (optimizer update + apply_updates, fixed
   gradients) on float32 params of ~4e6 elements: ``benna_fusi`` with the
   default n = 8 chain vs ``multiscale(modes.learning_rates, modes.decays)``,
   timed round-robin so both see the same machine load. Also reports how many
   params-sized buffers each state holds.

Usage: ``python -m benchmarks.benna_fusi_speed`` (about a minute on 2 CPU
cores). Writes ``benchmarks/results/benna_fusi_speed.json``.
"""

from __future__ import annotations

import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import harness


def _median_time(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_modes(sizes, repeats):
  rows = []
  with jax.enable_x64(True):
    modes_fn = jax.jit(mso.benna_fusi_modes)
    for n in sizes:
      capacities, conductances = mso.benna_fusi_defaults(n)
      args = (jnp.asarray(capacities), jnp.asarray(conductances))
      start = time.perf_counter()
      modes = jax.block_until_ready(modes_fn(*args))
      compile_s = time.perf_counter() - start
      seconds = _median_time(lambda a=args: modes_fn(*a), repeats)
      rows.append({
          'n': n,
          'median_ms': 1e3 * seconds,
          'first_call_s': compile_s,
          # Strict JSON has no inf: non-finite V (underflow) is 'inf'.
          'condition_number': (
              float(modes.condition_number)
              if np.isfinite(float(modes.condition_number)) else 'inf'),
          'slowest_decay': float(modes.decays[0]),
      })
      print(f'  modes n={n}: {1e3 * seconds:.3f} ms', flush=True)
  return rows


def _state_buffers(state, params):
  size = sum(leaf.size for leaf in jax.tree.leaves(params))
  return sum(leaf.size for leaf in jax.tree.leaves(state)
             if leaf.ndim > 0) / size


def time_steps(num_variables, rounds, shapes):
  capacities, conductances = mso.benna_fusi_defaults(num_variables)
  with jax.enable_x64(True):
    modes = mso.benna_fusi_modes(
        capacities, conductances, learning_rate=0.1)
    learning_rates = np.asarray(modes.learning_rates)
    decays = np.asarray(modes.decays)
  optimizers = {
      'benna_fusi': mso.benna_fusi(
          capacities, conductances, learning_rate=0.1),
      'multiscale form': mso.multiscale(learning_rates, decays),
  }
  key = jax.random.PRNGKey(0)
  keys = jax.random.split(key, len(shapes))
  grads = {f'p{i}': 1e-3 * jax.random.normal(k, shape, jnp.float32)
           for i, (k, shape) in enumerate(zip(keys, shapes))}
  setups = {}
  for name, optimizer in optimizers.items():
    def step(params, state, grads, optimizer=optimizer):
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.zeros_like, grads)
    state = optimizer.init(params)
    buffers = _state_buffers(state, params)
    params, state = jax.block_until_ready(step(params, state, grads))
    setups[name] = {'step': step, 'carry': (params, state),
                    'buffers': buffers, 'times': []}
  for round_index in range(rounds):
    for setup in setups.values():
      params, state = setup['carry']
      start = time.perf_counter()
      carry = jax.block_until_ready(setup['step'](params, state, grads))
      setup['times'].append(time.perf_counter() - start)
      setup['carry'] = carry
    if (round_index + 1) % 10 == 0:
      print(f'  step round {round_index + 1}/{rounds}', flush=True)
  size = sum(int(np.prod(shape)) for shape in shapes)
  rows = []
  for name, setup in setups.items():
    rows.append({
        'optimizer': name,
        'num_params': size,
        'median_ms': 1e3 * statistics.median(setup['times']),
        'state_buffers_per_param': setup['buffers'],
    })
  return rows


def _format(value):
  return value if isinstance(value, str) else f'{value:.3g}'


def main(argv=None):
  parser = harness.parser(__doc__)
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args(argv)
  started = time.perf_counter()
  print('benna_fusi_modes under jax.jit (float64):', flush=True)
  with warnings.catch_warnings():
    # n = 64, 512 underflow V's slow columns; timing is what is measured.
    warnings.simplefilter('ignore', UserWarning)
    modes_rows = time_modes((8, 64, 512), args.repeats)
  shapes = [(2000, 1500), (1000, 1000)]
  print('training step, float32, donated, round-robin:', flush=True)
  step_rows = time_steps(8, args.rounds, shapes)

  print()
  print('| n | jit(benna_fusi_modes) median | first call (compile) | cond(V) |')
  print('|---|---|---|---|')
  for row in modes_rows:
    print(f"| {row['n']} | {row['median_ms']:.3f} ms | "
          f"{row['first_call_s']:.2f} s | {_format(row['condition_number'])} |")
  print()
  print('| optimizer (n = 8) | params | step median | stored buffers / param |')
  print('|---|---|---|---|')
  for row in step_rows:
    print(f"| {row['optimizer']} | {row['num_params']:.2e} | "
          f"{row['median_ms']:.2f} ms | {row['state_buffers_per_param']:.0f} |")
  ratio = step_rows[1]['median_ms'] / step_rows[0]['median_ms']
  print(f'\nmultiscale form / benna_fusi step time: {ratio:.2f}')

  rows = [{'id': f"modes/n{row['n']}", 'label': f"modes, n = {row['n']}",
           'part': 'modes', **row} for row in modes_rows]
  rows += [{'id': 'step/' + harness.slug(row['optimizer']),
            'label': row['optimizer'], 'part': 'step', **row}
           for row in step_rows]
  rows[-1]['ratio_to_benna_fusi'] = ratio
  document = harness.results_document(
      'benna_fusi_speed', seconds=time.perf_counter() - started, rows=rows,
      config={'rounds': args.rounds, 'repeats': args.repeats})
  print(f"wrote {harness.write_results(args.out or 'benna_fusi_speed', document)}")


if __name__ == '__main__':
  main()
