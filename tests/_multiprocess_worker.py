"""One process of a two-process JAX job that trains with a multiscale learner.

``tests/test_multiprocess.py`` launches two copies of this script (JAX's
multi-controller runtime on CPU: each process drives two local devices, and
the four devices form one global mesh). Params and every optimizer state leaf
are sharded FSDP-style (first axis over the mesh), each process feeds its own
slice of every batch, and an Orbax checkpoint is written by both processes.

Usage::

  python tests/_multiprocess_worker.py PHASE COORDINATOR NUM_PROCESSES \
      PROCESS_ID DIRECTORY

``PHASE`` is ``train`` (train all steps, checkpoint half-way), ``resume``
(restore the checkpoint and train the remaining steps) or ``crash`` (process 1
fails at once, process 0 trains). Process 0 writes the
final params and optimizer state, gathered, to ``DIRECTORY/PHASE.npz``.

Importing this module has no side effects: the test imports it to run the
same steps in one process, on one device, as the reference. The code blocks of
``docs/scaling_out.md`` are lines of this file (a test checks it).
"""

from __future__ import annotations

import itertools
import os
import pathlib
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import multiscale_optax as mso

LEARNING_RATES = (1e-2, 5e-3, 2e-3)
DECAYS = (1.0, 0.9, 0.99)
LAYER_SIZES = (8, 16, 4)
GLOBAL_BATCH = 8
TOTAL_STEPS = 6
CHECKPOINT_STEP = 3


def make_optimizer() -> optax.GradientTransformation:
  """Adam directions, integrated by a three-timescale multiscale learner."""
  return optax.chain(
      optax.scale_by_adam(),
      mso.multiscale(LEARNING_RATES, DECAYS),
  )


def init_params() -> dict[str, dict[str, np.ndarray]]:
  """MLP params as host (NumPy) arrays, the same in every process."""
  rng = np.random.default_rng(0)
  params = {}
  for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(LAYER_SIZES)):
    params[f'layer{layer}'] = {
        'w': rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in),
        'b': np.zeros(fan_out),
    }
  return params


def global_batches() -> tuple[np.ndarray, np.ndarray]:
  """Inputs and targets of every step, ``(steps, GLOBAL_BATCH, features)``."""
  rng = np.random.default_rng(1)
  inputs = rng.standard_normal((TOTAL_STEPS, GLOBAL_BATCH, LAYER_SIZES[0]))
  targets = np.sin(inputs[..., : LAYER_SIZES[-1]])
  return inputs, targets


def loss_fn(params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error of a tanh MLP."""
  hidden = inputs
  for index, name in enumerate(sorted(params)):
    hidden = hidden @ params[name]['w'] + params[name]['b']
    if index < len(params) - 1:
      hidden = jnp.tanh(hidden)
  return 0.5 * jnp.mean(jnp.sum((hidden - targets) ** 2, axis=-1))


def make_train_step(optimizer: optax.GradientTransformation) -> Any:
  """One optimizer step (not jitted: callers choose the shardings)."""

  def train_step(params, opt_state, inputs, targets):
    grads = jax.grad(loss_fn)(params, inputs, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return train_step


def fsdp_sharding(mesh: Mesh, leaf: Any) -> NamedSharding:
  """Shards a leaf's first axis over the mesh; replicates what cannot split."""
  devices = mesh.devices.size
  if getattr(leaf, 'ndim', 0) >= 1 and leaf.shape[0] % devices == 0:
    return NamedSharding(mesh, P('fsdp'))
  return NamedSharding(mesh, P())


def _gathered(tree: Any) -> dict[str, np.ndarray]:
  """Every leaf of ``tree`` as a full host array, keyed by its path."""
  from jax.experimental import multihost_utils

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      jax.tree_util.keystr(path): np.asarray(
          multihost_utils.process_allgather(leaf, tiled=True))
      for path, leaf in leaves
  }


def main(phase: str, coordinator: str, num_processes: int, process_id: int,
         directory: pathlib.Path) -> None:
  """Runs ``phase`` as process ``process_id`` of ``num_processes``."""
  import orbax.checkpoint as ocp

  # A process of its own: the global switch is the right scope here.
  jax.config.update('jax_enable_x64', True)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator, num_processes=num_processes, process_id=process_id,
      initialization_timeout=60)
  try:
    if phase == 'crash' and process_id == 1:
      raise RuntimeError('injected failure')  # for the launcher's test
    train(phase, directory, ocp)
  except BaseException:
    # Fail fast, without the shutdown barrier: the peer may be waiting in a
    # collective and would never reach it. Once this process is gone the
    # peer's runtime reports the error (or the launcher kills it).
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
  # Leave together: shutdown is a barrier. A process that just returned
  # could exit while its peer still needs it (the coordinator lives in
  # process 0), leaving the peer waiting for the runtime's timeouts.
  jax.distributed.shutdown()


def train(phase: str, directory: pathlib.Path, ocp: Any) -> None:
  mesh = Mesh(np.asarray(jax.devices()), ('fsdp',))
  optimizer = make_optimizer()
  host_params = init_params()
  param_shardings = jax.tree.map(
      lambda leaf: fsdp_sharding(mesh, leaf), host_params)
  params = jax.device_put(host_params, param_shardings)
  state_shardings = jax.tree.map(
      lambda leaf: fsdp_sharding(mesh, leaf),
      jax.eval_shape(optimizer.init, params))
  opt_state = jax.jit(optimizer.init, out_shardings=state_shardings)(params)
  train_step = jax.jit(
      make_train_step(optimizer),
      out_shardings=(param_shardings, state_shardings),
      donate_argnums=(0, 1))

  # Data parallel: each process loads only its rows of the global batch.
  batch_sharding = NamedSharding(mesh, P('fsdp'))
  rows = GLOBAL_BATCH // jax.process_count()
  local_rows = slice(jax.process_index() * rows,
                     (jax.process_index() + 1) * rows)

  def global_batch(array: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(
        batch_sharding, array[local_rows], array.shape)

  checkpointer = ocp.StandardCheckpointer()
  checkpoint = (directory / 'checkpoint').absolute()
  inputs, targets = global_batches()
  first_step = 0
  if phase == 'resume':
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=leaf.sharding),
        (params, opt_state))
    params, opt_state = checkpointer.restore(checkpoint, abstract)
    first_step = CHECKPOINT_STEP
  for step in range(first_step, TOTAL_STEPS):
    params, opt_state = train_step(
        params, opt_state, global_batch(inputs[step]),
        global_batch(targets[step]))
    if phase == 'train' and step + 1 == CHECKPOINT_STEP:
      # Every process writes its own shards; save returns once the write is
      # under way, wait_until_finished is a barrier across processes.
      checkpointer.save(checkpoint, (params, opt_state))
      checkpointer.wait_until_finished()
  checkpointer.close()
  for leaf in jax.tree.leaves((params, opt_state)):
    expected = fsdp_sharding(mesh, leaf)
    if not leaf.sharding.is_equivalent_to(expected, leaf.ndim):
      raise AssertionError(f'{leaf.shape}: {leaf.sharding} != {expected}')
  result = _gathered({'params': params, 'opt_state': opt_state})
  if jax.process_index() == 0:
    np.savez(directory / f'{phase}.npz', **result)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
       pathlib.Path(sys.argv[5]))
