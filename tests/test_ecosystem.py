"""The multiscale optimizer inside Flax NNX, Equinox and Orbax.

Users train with ``nnx.Optimizer`` or ``eqx.filter`` + optax and checkpoint
with Orbax; these tests check that each path gives exactly what the plain
optax loop gives, and that a checkpoint restored in a fresh process resumes
bit for bit.

Run as a script (``python tests/test_ecosystem.py CHECKPOINT_DIR OUT_DIR``)
this file is the fresh process: it restores every checkpoint in
``CHECKPOINT_DIR`` and writes the continued trajectories to ``OUT_DIR``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import multiscale_optax as mso

_SIZES = (3, 8, 2)
_STEPS_BEFORE_SAVE = 50
_STEPS_AFTER_SAVE = 50


def _multiscale_adam(learning_rate=0.01):
  """Adam directions into a permanent part and subweights with log-spaced
  timescales from 1 to 1000 steps."""
  timescales = np.append(mso.log_spaced_timescales(1.0, 1000.0, 4), np.inf)
  decays = mso.decays_from_timescales(timescales)
  rates = learning_rate * np.ones_like(decays) / len(decays)
  return optax.chain(optax.scale_by_adam(), mso.multiscale(rates, decays))


def _optimizers():
  return {
      'multiscale_adam': _multiscale_adam(),
      'fast_weights': mso.fast_weights(0.05, 0.2, 0.9),
  }


# --------------------------------------------------------------------------
# Flax NNX


class _NnxMlp(nnx.Module):
  """The tanh MLP of ``helpers.mlp_loss`` as an NNX module."""

  def __init__(self, rngs: nnx.Rngs, dtype=jnp.float64):
    self.layer0 = nnx.Linear(_SIZES[0], _SIZES[1], rngs=rngs, param_dtype=dtype)
    self.layer1 = nnx.Linear(_SIZES[1], _SIZES[2], rngs=rngs, param_dtype=dtype)

  def __call__(self, inputs):
    return self.layer1(jnp.tanh(self.layer0(inputs)))


def _nnx_to_helper_params(model: _NnxMlp) -> dict:
  return {
      name: {'w': layer.kernel[...], 'b': layer.bias[...]}
      for name, layer in (('layer0', model.layer0), ('layer1', model.layer1))
  }


def test_flax_nnx_optimizer_matches_optax_loop():
  with jax.enable_x64(True):
    inputs, targets = helpers.mlp_batches(jax.random.key(1), 30)
    for name, tx in _optimizers().items():
      model = _NnxMlp(nnx.Rngs(0))
      reference = helpers.run_trajectory(
          tx, _nnx_to_helper_params(model), (inputs, targets))
      optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

      @nnx.jit
      def train_step(model, optimizer, batch_inputs, batch_targets):
        def loss_fn(model):
          return 0.5 * jnp.mean(jnp.sum(
              (model(batch_inputs) - batch_targets) ** 2, axis=-1))
        optimizer.update(model, nnx.grad(loss_fn)(model))

      history = []
      for step in range(inputs.shape[0]):
        train_step(model, optimizer, inputs[step], targets[step])
        history.append(_nnx_to_helper_params(model))
      history = jax.tree.map(lambda *leaves: jnp.stack(leaves), *history)
      assert int(optimizer.step[...]) == inputs.shape[0]
      difference = helpers.max_abs_difference(history, reference)
      assert difference < 1e-10, (name, difference)
      # The params moved, so the comparison is not between two copies of
      # the initial point.
      moved = helpers.max_abs_difference(
          jax.tree.map(lambda leaf: leaf[-1], reference),
          jax.tree.map(lambda leaf: leaf[0], reference))
      assert moved > 1e-3, name


# --------------------------------------------------------------------------
# Equinox


class _EqxModel(eqx.Module):
  """An MLP with non-array leaves: activation functions, ints, a string, and
  an integer array that must not be trained."""

  mlp: eqx.nn.MLP
  label: str = eqx.field(static=True)
  calls: jax.Array

  def __call__(self, inputs):
    return jax.vmap(self.mlp)(inputs)


def _eqx_to_helper_params(model: _EqxModel) -> dict:
  return {
      f'layer{index}': {'w': layer.weight.T, 'b': layer.bias}
      for index, layer in enumerate(model.mlp.layers)
  }


def _eqx_train_step(tx: optax.GradientTransformation):
  """The usual Equinox step: filtered grads, filtered params, optax."""

  @eqx.filter_jit
  def train_step(model, opt_state, batch_inputs, batch_targets):
    def loss_fn(model):
      return 0.5 * jnp.mean(jnp.sum(
          (model(batch_inputs) - batch_targets) ** 2, axis=-1))
    grads = eqx.filter_grad(loss_fn)(model)
    updates, opt_state = tx.update(
        grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state

  return train_step


def test_equinox_filter_matches_optax_loop():
  with jax.enable_x64(True):
    inputs, targets = helpers.mlp_batches(jax.random.key(2), 30)
    for name, tx in _optimizers().items():
      model = _EqxModel(
          mlp=eqx.nn.MLP(
              _SIZES[0], _SIZES[2], _SIZES[1], depth=1,
              activation=jnp.tanh, dtype=jnp.float64, key=jax.random.key(3)),
          label='tanh-mlp',
          calls=jnp.zeros([], jnp.int32),
      )
      reference = helpers.run_trajectory(
          tx, _eqx_to_helper_params(model), (inputs, targets))
      opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))
      train_step = _eqx_train_step(tx)
      history = []
      for step in range(inputs.shape[0]):
        model, opt_state = train_step(
            model, opt_state, inputs[step], targets[step])
        history.append(_eqx_to_helper_params(model))
      history = jax.tree.map(lambda *leaves: jnp.stack(leaves), *history)
      difference = helpers.max_abs_difference(history, reference)
      assert difference < 1e-10, (name, difference)
      # Non-array leaves pass through untouched.
      assert model.mlp.activation is jnp.tanh
      assert model.label == 'tanh-mlp'
      assert model.calls.dtype == jnp.int32 and int(model.calls) == 0
      # get_subweights reads the chained state of a filtered model.
      subweights = mso.get_subweights(
          eqx.filter(model, eqx.is_inexact_array), opt_state)
      total = jax.tree.map(
          lambda *parts: sum(parts[1:], parts[0]), *subweights.values)
      assert helpers.max_abs_difference(
          total, eqx.filter(model, eqx.is_inexact_array)) < 1e-12


# --------------------------------------------------------------------------
# Orbax: save mid-training, restore in a fresh process, resume bit-exactly.


def _checkpoint_cases():
  """Optimizers and param dtypes whose checkpoints are round-tripped."""
  return {
      'multiscale_adam_f32': (_multiscale_adam(), jnp.float32),
      'bf16_state_dtype': (
          mso.multiscale(
              [0.02, 0.05, 0.1], [1.0, 0.99, 0.9], state_dtype=jnp.bfloat16),
          jnp.float32),
      'bf16_params_fast_weights': (
          mso.fast_weights(0.05, 0.2, 0.9), jnp.bfloat16),
  }


def _stream(dtype):
  inputs, targets = helpers.mlp_batches(
      jax.random.key(4), _STEPS_BEFORE_SAVE + _STEPS_AFTER_SAVE,
      dtype=jnp.float32)
  return inputs.astype(dtype), targets.astype(dtype)


def _as_bits(tree) -> list[np.ndarray]:
  """Leaves reinterpreted as unsigned integers, for bit-exact comparison."""
  leaves = []
  for leaf in jax.tree.leaves(tree):
    array = np.asarray(leaf)
    leaves.append(array.view(f'u{array.dtype.itemsize}'))
  return leaves


def _dtypes(tree) -> list[str]:
  return [str(np.asarray(leaf).dtype) for leaf in jax.tree.leaves(tree)]


def _dtypes_by_path(tree) -> dict[str, str]:
  """Leaf dtypes keyed by path, with NamedTuple fields and dict keys
  spelled alike (Orbax metadata stores NamedTuples as dicts)."""

  def name(key):
    for attribute in ('name', 'key', 'idx'):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  return {
      '/'.join(name(key) for key in path): str(leaf.dtype)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _resume_from_checkpoints(checkpoint_dir: str, out_dir: str) -> None:
  """The fresh process: restore each case and train on for 50 steps."""
  checkpointer = ocp.StandardCheckpointer()
  for name, (optimizer, dtype) in _checkpoint_cases().items():
    inputs, targets = _stream(dtype)
    abstract_params = jax.eval_shape(
        functools.partial(helpers.mlp_params, sizes=_SIZES, dtype=dtype),
        jax.random.key(0))
    abstract = {
        'params': abstract_params,
        'opt_state': jax.eval_shape(optimizer.init, abstract_params),
    }
    path = os.path.join(checkpoint_dir, name)
    stored_dtypes = _dtypes_by_path(checkpointer.metadata(path).item_metadata)
    restored = checkpointer.restore(path, abstract)
    (params, opt_state), path_params = helpers.scan_training(
        optimizer, restored['params'], restored['opt_state'],
        (inputs[_STEPS_BEFORE_SAVE:], targets[_STEPS_BEFORE_SAVE:]))
    np.savez(
        os.path.join(out_dir, f'{name}.npz'),
        *_as_bits((path_params, params, opt_state)))
    with open(os.path.join(out_dir, f'{name}.json'), 'w') as file:
      json.dump({
          'backend': jax.default_backend(),
          'restored_treedef': str(jax.tree.structure(restored)),
          'restored_dtypes': _dtypes(restored),
          'stored_dtypes': stored_dtypes,
      }, file)


def test_orbax_checkpoint_resumes_bit_exactly_in_fresh_process(tmp_path):
  checkpoint_dir = tmp_path / 'checkpoints'
  out_dir = tmp_path / 'resumed'
  out_dir.mkdir()
  checkpointer = ocp.StandardCheckpointer()
  expected = {}
  for name, (optimizer, dtype) in _checkpoint_cases().items():
    inputs, targets = _stream(dtype)
    params = helpers.mlp_params(jax.random.key(0), _SIZES, dtype)
    (params, opt_state), _ = helpers.scan_training(
        optimizer, params, optimizer.init(params),
        (inputs[:_STEPS_BEFORE_SAVE], targets[:_STEPS_BEFORE_SAVE]))
    saved = {'params': params, 'opt_state': opt_state}
    checkpointer.save(checkpoint_dir / name, saved)
    (final_params, final_state), path_params = helpers.scan_training(
        optimizer, params, opt_state,
        (inputs[_STEPS_BEFORE_SAVE:], targets[_STEPS_BEFORE_SAVE:]))
    expected[name] = (saved, (path_params, final_params, final_state))
  checkpointer.wait_until_finished()

  # The fresh process runs on this process's backend (bit-exact resumption
  # is a claim about one backend). It must not preallocate GPU memory: this
  # process already holds most of it. It imports `helpers`, which imports
  # the benchmarks' library from the repository root, as pytest does.
  backend = jax.default_backend()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(
      [sys.executable, __file__, str(checkpoint_dir), str(out_dir)],
      check=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': backend,
           'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
           'PYTHONPATH': os.pathsep.join(
               filter(None, [root, os.environ.get('PYTHONPATH')]))})

  for name, (saved, continuation) in expected.items():
    with open(out_dir / f'{name}.json') as file:
      report = json.load(file)
    assert report['backend'] == backend, name
    assert report['restored_treedef'] == str(jax.tree.structure(saved)), name
    assert report['restored_dtypes'] == _dtypes(saved), name
    assert report['stored_dtypes'] == _dtypes_by_path(saved), name
    with np.load(out_dir / f'{name}.npz') as resumed:
      resumed_leaves = [resumed[f'arr_{i}'] for i in range(len(resumed))]
    expected_leaves = _as_bits(continuation)
    assert len(resumed_leaves) == len(expected_leaves), name
    for got, want in zip(resumed_leaves, expected_leaves, strict=True):
      assert got.dtype == want.dtype and np.array_equal(got, want), name
  # The low-precision cases really store low-precision subweights.
  bf16_state = expected['bf16_state_dtype'][0]['opt_state']
  assert {leaf.dtype for leaf in jax.tree.leaves(bf16_state.subweights)} == {
      jnp.dtype(jnp.bfloat16)}
  assert bf16_state.layout.group_decays == (0.99, 0.9)
  multiscale_state = expected['multiscale_adam_f32'][0]['opt_state'][1]
  assert isinstance(multiscale_state, mso.MultiscaleState)
  assert len(multiscale_state.subweights) == 4  # timescales 1, 10, 100, 1000


if __name__ == '__main__':
  _resume_from_checkpoints(*sys.argv[1:3])
