r"""Conditioning of the Benna–Fusi → multiscale reparameterisation.

For default Benna–Fusi chains (``benna_fusi_defaults(n)``) of length
:math:`n = 2..28` (the longest chain ``benna_fusi_defaults`` builds in
float64) this reports

* :math:`\kappa(V)`, the condition number of the eigenvector matrix that
  maps subweights to chain states (``benna_fusi_modes(...).condition_number``,
  computed in float64), and whether ``benna_fusi_modes`` warned;
* for a subset of lengths, the float32 error of running the multiscale form
  (``multiscale(modes.learning_rates, modes.decays)``, float32 params and
  state) against the float64 chain (``benna_fusi``) for ``--steps`` steps,
  next to the float32 chain's own error: the largest weight difference over
  the run divided by the largest weight, on a quadratic loss tracking a
  drifting float32 target (the same stream for every run).

Usage::

  python -m benchmarks.benna_fusi_conditioning            # 10^5 steps
  python -m benchmarks.benna_fusi_conditioning --steps 10000

Writes ``benchmarks/results/benna_fusi_conditioning.json``.

References:
  Jones, `Learning at Multiple Timescales
  <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4 and Appendix.
"""

from __future__ import annotations

import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import harness

NUM_WEIGHTS = 16
RECORD_EVERY = 1_000


def target_stream(steps: int, seed: int) -> np.ndarray:
  """A float32 target that drifts at every timescale: a random walk plus
  independent noise, one column per weight."""
  rng = np.random.default_rng(seed)
  walk = np.cumsum(0.01 * rng.normal(size=(steps, NUM_WEIGHTS)), axis=0)
  return (walk + rng.normal(size=(steps, NUM_WEIGHTS))).astype(np.float32)


def trajectory(optimizer, dtype, targets) -> np.ndarray:
  """Weights every RECORD_EVERY steps of L = |w - target|^2 / 2."""

  def step(carry, target):
    params, state = carry
    updates, state = optimizer.update(params - target, state, params)
    return (optax.apply_updates(params, updates), state), None

  def chunk(carry, block):
    carry, _ = jax.lax.scan(step, carry, block)
    return carry, carry[0]

  params = jnp.zeros(NUM_WEIGHTS, dtype)
  blocks = jnp.asarray(targets, dtype).reshape(
      -1, RECORD_EVERY, NUM_WEIGHTS)
  run = jax.jit(lambda carry, blocks: jax.lax.scan(chunk, carry, blocks)[1])
  return np.asarray(run((params, optimizer.init(params)), blocks), np.float64)


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
  return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def finite_or_text(value: float) -> float | str:
  """``value``, or ``'inf'``/``'nan'`` (JSON has no infinity)."""
  return value if math.isfinite(value) else str(value)


def conditioning(lengths=range(2, 29)) -> dict[int, dict]:
  """cond(V), whether ``benna_fusi_modes`` warned and the slowest decaying
  mode's leak, per chain length (float64 must be enabled)."""
  print('condition number of V (float64); warned: benna_fusi_modes warned '
        'that it is ill-conditioned')
  result = {}
  for n in lengths:
    capacities, conductances = mso.benna_fusi_defaults(n)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      modes = mso.benna_fusi_modes(capacities, conductances)
    result[n] = {
        'condition_number': finite_or_text(float(modes.condition_number)),
        'warned': any(issubclass(w.category, UserWarning) for w in caught),
        # 1 - decay of the slowest decaying mode: 0 once it rounds to 1.
        'second_mode_leak': float(1.0 - modes.decays[1]),
    }
  print(f'{"n":>3} {"cond(V)":>10} {"warned":>6} {"1 - decay[1]":>13}')
  for n, row in result.items():
    print(f'{n:>3} {float(row["condition_number"]):10.3e} '
          f'{row["warned"]!s:>6} {row["second_mode_leak"]:13.3e}')
  return result


def float32_errors(n: int, learning_rate: float, targets) -> dict[str, float]:
  """The float32 multiscale form's, the float32 chain's and the float64
  multiscale form's weight error against the float64 chain of length ``n``
  (float64 must be enabled)."""
  capacities, conductances = mso.benna_fusi_defaults(n)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    modes = mso.benna_fusi_modes(
        capacities, conductances, learning_rate=learning_rate)
  rates = np.asarray(modes.learning_rates, np.float64).tolist()
  decays = np.asarray(modes.decays, np.float64).tolist()
  chain = mso.benna_fusi(capacities.tolist(), conductances.tolist(),
                         learning_rate=learning_rate)
  multiscale = mso.multiscale(rates, decays)
  reference = trajectory(chain, jnp.float64, targets)
  return {
      'multiscale_float32': relative_error(
          trajectory(multiscale, jnp.float32, targets), reference),
      'chain_float32': relative_error(
          trajectory(chain, jnp.float32, targets), reference),
      'multiscale_float64': relative_error(
          trajectory(multiscale, jnp.float64, targets), reference),
  }


def main(argv=None):
  parser = harness.parser(__doc__)
  parser.add_argument('--steps', type=int, default=100_000)
  parser.add_argument('--lengths', type=int, nargs='*',
                      default=[2, 4, 8, 16, 25, 26, 28])
  parser.add_argument('--learning-rate', type=float, default=0.05)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  steps = args.steps - args.steps % RECORD_EVERY
  started = time.perf_counter()
  with jax.enable_x64(True):
    record = conditioning()
    targets = target_stream(steps, args.seed)
    errors, start = {}, time.perf_counter()
    print(f'\nfloat32 weight error against the float64 chain, {steps:,d} '
          'steps')
    print(f'{"n":>3} {"cond(V)":>10} {"multiscale32":>12} {"chain32":>10} '
          f'{"multiscale64":>12} {"seconds":>8}')
    for n in args.lengths:
      errors[n] = row = float32_errors(n, args.learning_rate, targets)
      print(f'{n:>3} {float(record[n]["condition_number"]):10.3e} '
            f'{row["multiscale_float32"]:12.2e} {row["chain_float32"]:10.2e} '
            f'{row["multiscale_float64"]:12.2e} '
            f'{time.perf_counter() - start:8.1f}', flush=True)
  rows = [{'id': f'n{n}', 'label': str(n), 'n': n, **values,
           **errors.get(n, {})} for n, values in record.items()]
  document = harness.results_document(
      'benna_fusi_conditioning',
      config={'steps': steps, 'learning_rate': args.learning_rate},
      rows=rows, seconds=time.perf_counter() - started)
  print(f"wrote {harness.write_results(args.out or 'benna_fusi_conditioning', document)}")


if __name__ == '__main__':
  main()
