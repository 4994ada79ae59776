r"""Compile time of one Bayesian update against the number of params leaves.

A network is a pytree of many leaves (a transformer block has a dozen), and
the Bayesian multiscale learner's update is written leaf by leaf (each leaf
keeps its shape and sharding), so its compiled program grows with the leaf
count. This script lowers and compiles the donated step
(``optax.apply_updates`` included) of ``bayesian_multiscale`` with k = 4
subweights for params of ``--leaves`` leaves of ``--leaf-size`` float32
entries each, diagonal (rank 0) and low rank (``--ranks``), beside Adam,
and reports the seconds of ``jit(...).lower(...).compile()`` (the median of
``--repeats`` fresh compilations; JAX's compilation cache is cleared before
each).

Usage::

  python -m benchmarks.compile_time
  python -m benchmarks.compile_time --leaves 10 80 --repeats 1 --out scratch

Writes ``benchmarks/results/compile_time.json`` (or ``--out``'s stem); rows
``leaves<count>/<learner>`` with ``compile_seconds`` and
``ratio_to_rank0`` (the same leaf count's rank-0 row).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import multiscale_optax as mso
from benchmarks import harness

DECAYS = (0.5, 0.5 ** 0.25, 0.5 ** (1 / 16), 0.5 ** (1 / 64))


def learners(ranks: list[int]) -> dict[str, tuple[str, Callable[[], Any]]]:
  """Row suffix -> (label, optimizer factory)."""
  rows: dict[str, tuple[str, Callable[[], Any]]] = {
      'adam': ('Adam', lambda: optax.adam(1e-3))}
  for rank in ranks:
    rows[f'bayesian_k4_rank{rank}'] = (
        f'Bayesian multiscale, k = 4, rank {rank}',
        lambda rank=rank: mso.bayesian_multiscale(
            list(DECAYS), [1 - d * d for d in DECAYS], 1.0, rank=rank))
  return rows


def compile_seconds(optimizer: Any, bayesian: bool, leaves: int,
                    leaf_size: int) -> float:
  """Seconds to lower and compile one donated step."""
  params = [jnp.zeros((leaf_size,), jnp.float32) for _ in range(leaves)]
  state = optimizer.init(params)

  def step(params, state, grads, jacobian):
    extra = {'jacobian': jacobian} if bayesian else {}
    updates, state = optimizer.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  jax.clear_caches()
  start = time.perf_counter()
  jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params, params).compile()
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
  parser = harness.parser(__doc__)
  parser.add_argument('--leaves', type=int, nargs='+', default=[10, 80, 300])
  parser.add_argument('--ranks', type=int, nargs='+', default=[0, 10])
  parser.add_argument('--leaf-size', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  rows = []
  for leaves in args.leaves:
    for suffix, (label, make) in learners(args.ranks).items():
      seconds = statistics.median(
          compile_seconds(make(), suffix != 'adam', leaves, args.leaf_size)
          for _ in range(args.repeats))
      rows.append({'id': f'leaves{leaves}/{suffix}',
                   'label': f'{label}, {leaves} leaves', 'leaves': leaves,
                   'learner': suffix, 'compile_seconds': seconds})
    rank0 = next((row['compile_seconds'] for row in rows if row['id'] == (
        f'leaves{leaves}/bayesian_k4_rank0')), None)
    for row in rows:
      if row['leaves'] == leaves:
        row['ratio_to_rank0'] = (None if rank0 is None
                                 else row['compile_seconds'] / rank0)
        print(f'{row["label"]:48s} {row["compile_seconds"]:8.2f} s')
  document = harness.results_document(
      'compile_time', config={'leaves': args.leaves, 'ranks': args.ranks,
                              'leaf_size': args.leaf_size,
                              'repeats': args.repeats,
                              'decays': list(DECAYS)},
      rows=rows, seconds=time.perf_counter() - start)
  print(f'wrote {harness.write_results(args.out or "compile_time", document)}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
