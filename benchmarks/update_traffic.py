r"""Memory traffic and time of one Bayesian update against Adam (update only).

The Bayesian multiscale learner's update with :math:`k` subweights, given
the Jacobian of a scalar output, must at least read and write the
:math:`2k` state arrays (means and variances), read the Jacobian and the
gradient, and read and write the params: :math:`4k + 4` arrays per
parameter (Adam: 7). The variance of the innovation is a reduction over the
whole network that must end before any state is written, so a real step
also reads the Jacobian and the summed variances once more.

This script compiles the donated step (``optax.apply_updates`` included)
and counts, in the top-level computation XLA runs, every read and write of
a params-sized array (a ``copy`` of the state is a read and a write; a
``lax.cond`` branch that does not run is not counted). It then times the
steps at ``--size`` float32 params, round-robin in one process (each
timed step after an untimed one of the same row), and reports medians and
ratios to Adam.

Usage::

  python -m benchmarks.update_traffic              # 1e7 params, 15 rounds
  python -m benchmarks.update_traffic --size 1e6 --rounds 5
  python -m benchmarks.update_traffic --only bayesian_k1 bayesian_k4 \
      --out update_traffic_k1_k4

Writes ``benchmarks/results/update_traffic.json`` (or ``--out``'s stem).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import harness

# The params of every step: this many equal float32 leaves.
NUM_LEAVES = 4
# Ranks of the low-rank rows (k = 1 and 4 each).
RANKS = (1, 5, 10)
# The size at which the compiled step's traffic is counted (any size works:
# the count is per parameter).
COUNT_SIZE = 1 << 20
_INSTRUCTION = re.compile(
    r'\s*(?:ROOT )?%(\S+) = (\w+\[[\d,]*\])(?:\{[^}]*\})? ([\w-]+)\((.*)')
_FREE = ('parameter', 'bitcast', 'tuple', 'get-tuple-element', 'constant')


def learners() -> dict[str, tuple[str, Callable[[], Any], int]]:
  """Row id -> (label, optimizer factory, minimal arrays per parameter)."""
  def bayesian(k: int, rank: int | None = None) -> Callable[[], Any]:
    decays = [0.5 ** (1 / 4**i) for i in range(k)]
    return lambda: mso.bayesian_multiscale(
        decays, [1 - d * d for d in decays], 1.0, rank=rank)
  def with_tau_one(k: int) -> Callable[[], Any]:
    # Timescales 1, 10, 100, ...: the first decay is e^-1 < 1/2.
    decays = [float(np.exp(-1.0 / 10.0**i)) for i in range(k)]
    return lambda: mso.bayesian_multiscale(
        decays, [1 - d * d for d in decays], 1.0)
  rows: dict[str, tuple[str, Callable[[], Any], int]] = {
      'adam': ('Adam', lambda: optax.adam(1e-3), 7)}
  for k in (1, 4, 8):
    rows[f'bayesian_k{k}'] = (f'Bayesian multiscale, k = {k}',
                              bayesian(k), 4 * k + 4)
  for k in (1, 4):
    rows[f'bayesian_k{k}_tau1'] = (
        f'Bayesian multiscale, k = {k}, timescales from 1',
        with_tau_one(k), 4 * k + 4)
  # Rank L adds kL factor entries per parameter, each read and written.
  rows['bayesian_k4_rank5'] = ('Bayesian multiscale, k = 4, rank 5',
                               bayesian(4, 5), 4 * 4 + 4 + 2 * 4 * 5)
  for k in (1, 4):
    for rank in RANKS:
      rows.setdefault(f'bayesian_k{k}_rank{rank}', (
          f'Bayesian multiscale, k = {k}, rank {rank}', bayesian(k, rank),
          4 * k + 4 + 2 * k * rank))
  return rows


def _step(optimizer: Any, bayesian: bool) -> Callable[..., Any]:
  def step(params, state, grads, jacobian):
    extra = {'jacobian': jacobian} if bayesian else {}
    updates, state = optimizer.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def _leaves(size: int, value: float) -> list[jax.Array]:
  return [jnp.full((size // NUM_LEAVES,), value, jnp.float32)
          for _ in range(NUM_LEAVES)]


def entry_traffic(hlo_text: str, leaf_size: int) -> dict[str, Any]:
  """Reads and writes of arrays of at least ``leaf_size`` entries in ENTRY.

  Each instruction of the entry computation that reads an operand of that
  size counts one read per distinct operand, and one write if it produces
  one; bitcasts, tuples and parameters move nothing. ``weighted_*`` count
  each array as its size over ``leaf_size`` (a rank-L factor of one leaf is
  L arrays), in entries, whatever the dtype.
  """
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  entry = entry[:entry.index('\n}')]
  sizes: dict[str, int] = {}
  reads = writes = copies = 0
  weighted_reads = weighted_writes = 0.0
  for line in entry.splitlines()[1:]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, rest = match.groups()
    dims = [int(d) for d in re.findall(r'\d+', shape.split('[', 1)[1])]
    size = 1
    for dim in dims:
      size *= dim
    sizes[name] = size
    if opcode in _FREE:
      continue
    operands = dict.fromkeys(re.findall(r'%([\w.\-]+)', rest.split(
        '), ')[0]))
    big = [sizes[operand] for operand in operands
           if sizes.get(operand, 0) >= leaf_size]
    reads += len(big)
    weighted_reads += sum(big) / leaf_size
    writes += int(size >= leaf_size)
    weighted_writes += size / leaf_size if size >= leaf_size else 0.0
    copies += int(opcode == 'copy' and size >= leaf_size)
  return {'reads': reads, 'writes': writes, 'total': reads + writes,
          'state_copies': copies, 'weighted_reads': weighted_reads,
          'weighted_writes': weighted_writes,
          'weighted_total': weighted_reads + weighted_writes}


def traffic(optimizer: Any, bayesian: bool) -> dict[str, Any]:
  """Arrays per parameter moved by one compiled step (``entry_traffic``)."""
  params = [jnp.zeros(COUNT_SIZE)]
  state = optimizer.init(params)
  text = _step(optimizer, bayesian).lower(
      params, state, params, params).compile().as_text()
  return entry_traffic(text, COUNT_SIZE)


def time_steps(size: int, rounds: int, rows: dict[str, Any],
               log: Callable[[str], None]) -> dict[str, list[float]]:
  """Seconds per step of every row, round-robin.

  In each round every row takes one untimed step before its timed one:
  what the previous row left behind (the rank-5 row frees about a
  gigabyte of buffers after its step) is then not charged to the next row.
  """
  held = {}
  for row_id, (_, make, _) in rows.items():
    optimizer = make()
    step = _step(optimizer, row_id != 'adam')
    params = _leaves(size, 0.01)
    state = optimizer.init(params)
    grads, jacobian = _leaves(size, 0.02), _leaves(size, 1.5)
    params, state = step(params, state, grads, jacobian)
    jax.block_until_ready(params)
    held[row_id] = [step, params, state, grads, jacobian]
  times: dict[str, list[float]] = {row_id: [] for row_id in rows}
  for index in range(rounds):
    for row_id, entry in held.items():
      step, params, state, grads, jacobian = entry
      params, state = step(params, state, grads, jacobian)
      jax.block_until_ready((params, state))
      start = time.perf_counter()
      params, state = step(params, state, grads, jacobian)
      jax.block_until_ready((params, state))
      times[row_id].append(time.perf_counter() - start)
      entry[1], entry[2] = params, state
    log(f'  round {index + 1}/{rounds}')
  return times


def main(argv: list[str] | None = None) -> int:
  parser = harness.parser(__doc__)
  parser.add_argument('--size', type=float, default=1e7)
  parser.add_argument('--rounds', type=int, default=15)
  parser.add_argument(
      '--only', nargs='+', default=None, metavar='ROW',
      help='time only these rows (adam is always kept): what else is held '
           'in memory changes the ratios')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  rows = learners()
  if args.only:
    unknown = sorted(set(args.only) - set(rows))
    if unknown:
      parser.error(f'unknown rows {unknown}; choose from {sorted(rows)}')
    rows = {row_id: row for row_id, row in rows.items()
            if row_id == 'adam' or row_id in args.only}
  size = int(args.size)
  times = time_steps(size, args.rounds, rows, print)
  adam = statistics.median(times['adam'])
  results = []
  for row_id, (label, make, minimum) in rows.items():
    counted = traffic(make(), row_id != 'adam')
    median = statistics.median(times[row_id])
    results.append({
        'id': row_id, 'label': label, 'minimum_arrays': minimum,
        'arrays_read': counted['reads'], 'arrays_written': counted['writes'],
        'arrays_moved': counted['total'],
        'weighted_arrays_moved': counted['weighted_total'],
        'weighted_to_minimum': counted['weighted_total'] / minimum,
        'state_copies': counted['state_copies'],
        'median_ms': 1e3 * median, 'ratio_to_adam': median / adam,
        'times_ms': [1e3 * t for t in times[row_id]]})
    print(f'{label:42s} arrays {counted["total"]:3d}, by size '
          f'{counted["weighted_total"]:6.1f} (minimum {minimum:3d}, copies '
          f'{counted["state_copies"]})  {1e3 * median:8.2f} ms  '
          f'{median / adam:5.2f}x Adam')
  document = harness.results_document(
      'update_traffic', config={'size': size, 'rounds': args.rounds,
                                'rows': list(rows),
                                'leaves': NUM_LEAVES,
                                'count_size': COUNT_SIZE},
      rows=results, seconds=time.perf_counter() - start)
  print(f'wrote {harness.write_results(args.out or "update_traffic", document)}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
