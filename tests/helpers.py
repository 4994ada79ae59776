"""Shared test helpers: a small MLP problem and optimizer-trajectory runners."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _online_regression

OnlineRun = _online_regression.OnlineRun


def mlp_params(key: jax.Array, sizes=(3, 8, 2), dtype=jnp.float64) -> dict:
  """Parameters of a small tanh MLP as a nested dict of arrays."""
  params = {}
  for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
    key, weight_key = jax.random.split(key)
    params[f'layer{layer}'] = {
        'w': jax.random.normal(weight_key, (fan_in, fan_out), dtype)
        / jnp.sqrt(fan_in),
        'b': jnp.zeros((fan_out,), dtype),
    }
  return params


def mlp_loss(params: dict, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared error of the MLP defined by ``mlp_params``."""
  hidden = inputs
  layers = sorted(params)
  for index, name in enumerate(layers):
    hidden = hidden @ params[name]['w'] + params[name]['b']
    if index < len(layers) - 1:
      hidden = jnp.tanh(hidden)
  return 0.5 * jnp.mean(jnp.sum((hidden - targets) ** 2, axis=-1))


def mlp_batches(key: jax.Array, steps: int, dtype=jnp.float64, batch=4,
                sizes=(3, 8, 2)):
  """A drifting regression stream: inputs and targets for each step."""
  input_key, target_key = jax.random.split(key)
  inputs = jax.random.normal(input_key, (steps, batch, sizes[0]), dtype)
  drift = jnp.cumsum(
      0.05 * jax.random.normal(target_key, (steps, 1, sizes[-1]), dtype),
      axis=0)
  targets = jnp.sin(inputs[..., : sizes[-1]]) + drift
  return inputs, targets


def mlp_problem(steps: int = 200, dtype=jnp.float64):
  """The standard test problem: MLP params and a drifting batch stream."""
  params = mlp_params(jax.random.PRNGKey(0), dtype=dtype)
  batches = mlp_batches(jax.random.PRNGKey(1), steps, dtype=dtype)
  return params, batches


def scan_training(
    optimizer: optax.GradientTransformation,
    params,
    opt_state,
    batches,
    loss_fn: Callable = mlp_loss,
):
  """Trains from ``(params, opt_state)`` over ``batches`` in a jitted scan.

  Returns the final ``(params, opt_state)`` and the stacked params after
  every step (leading axis: step).
  """
  grad_fn = jax.grad(loss_fn)

  @jax.jit
  def run(params, opt_state, batches):
    def step(carry, batch):
      params, opt_state = carry
      updates, opt_state = optimizer.update(
          grad_fn(params, *batch), opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), params

    return jax.lax.scan(step, (params, opt_state), batches)

  return run(params, opt_state, batches)


def run_trajectory(
    optimizer: optax.GradientTransformation,
    params,
    batches,
    loss_fn: Callable = mlp_loss,
):
  """Runs ``optimizer`` from a fresh state; returns the params path."""
  return scan_training(
      optimizer, params, optimizer.init(params), batches, loss_fn)[1]


def literal_multiscale_weights(
    learning_rates, decays, gradients, subweights=None, scales=None,
) -> np.ndarray:
  """Eq. (1) written out literally in float64 NumPy, every subweight stored.

  Args:
    learning_rates: one rate per subweight.
    decays: one decay per subweight, or ``(steps, subweights)``: the decays
      used at each step (decays that change during a run).
    gradients: ``(steps, *shape)`` update directions, real or complex.
    subweights: optional initial subweights, ``(len(learning_rates),
      *shape)``.
    scales: optional per-step learning-rate scales.

  Returns:
    The weight (sum of subweights) after every step, ``(steps, *shape)``.
  """
  gradients = np.asarray(
      gradients, np.result_type(np.float64, np.asarray(gradients).dtype))
  count = len(learning_rates)
  broadcast = (count,) + (1,) * (gradients.ndim - 1)
  rates = np.asarray(learning_rates, np.float64).reshape(broadcast)
  decays = np.asarray(decays, np.float64)
  per_step = decays.ndim == 2
  subweights = (
      np.zeros((count, *gradients.shape[1:]), gradients.dtype)
      if subweights is None else np.asarray(subweights, gradients.dtype))
  weights = []
  for step, gradient in enumerate(gradients):
    scale = 1.0 if scales is None else scales[step]
    decay = (decays[step] if per_step else decays).reshape(broadcast)
    subweights = decay * subweights - scale * rates * gradient
    weights.append(subweights.sum(axis=0))
  return np.stack(weights)


def max_abs_difference(first, second) -> float:
  """Largest absolute difference between two pytrees of arrays."""
  differences = jax.tree.leaves(
      jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), first, second))
  return float(max(differences))


def run_on_eight_cpu_devices(script: str) -> str:
  """Runs ``script`` in a fresh Python on an 8-device CPU mesh.

  The device count is fixed when JAX starts, so a sharding test needs its
  own process. Fails the calling test (with the child's output) unless the
  script exits 0 and its last line is ``SHARDING-OK``.

  Returns:
    The script's standard output.
  """
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = (
      environment.get('XLA_FLAGS', '')
      + ' --xla_force_host_platform_device_count=8')
  environment['JAX_PLATFORMS'] = 'cpu'
  result = subprocess.run(
      [sys.executable, '-c', script], env=environment, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.strip().endswith('SHARDING-OK'), result.stdout
  return result.stdout


def online_regression(opt, inputs, targets, noise_variance, params=None,
                      collect=None, extra_args=('jacobian', 'residual'),
                      ) -> OnlineRun:
  """A linear model predicts each target, then ``opt`` learns from it.

  ``benchmarks/_online_regression.py``'s loop, jitted: ``opt`` (a Bayesian
  learner) gets the gradient of ``(y - x.w)^2 / (2 r)`` and the extra
  arguments ``jacobian=x`` and ``residual=y - x.w`` (those of
  ``extra_args``). ``collect(state)`` is recorded after every step.
  """
  if params is None:
    params = jnp.zeros(inputs.shape[-1], inputs.dtype)
  def run(inputs, targets, params):
    return _online_regression.online_regression(
        opt, inputs, targets, noise_variance, params=params, collect=collect,
        extra_args=extra_args)
  return jax.jit(run)(inputs, targets, params)


def ar1_regression_stream(seed: int, steps: int, prior, dim: int = 4,
                          noise: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """A linear-regression stream whose weights drift by ``prior``.

  Each of ``dim`` weights is a sum of AR(1) parts with the prior's decays,
  process and initial variances (NumPy draws from ``seed``); inputs are
  standard normal and targets ``x . w + N(0, noise)``. Returns ``(inputs,
  targets)`` of shapes ``(steps, dim)`` and ``(steps,)``.
  """
  rng = np.random.default_rng(seed)
  decays = np.asarray(prior.decays)
  process = np.asarray(prior.process_variances)
  parts = rng.normal(size=(len(decays), dim)) * np.sqrt(
      np.asarray(prior.initial_variances))[:, None]
  inputs = rng.normal(size=(steps, dim))
  targets = np.empty(steps)
  for t in range(steps):
    targets[t] = inputs[t] @ parts.sum(0) + rng.normal() * np.sqrt(noise)
    parts = decays[:, None] * parts + rng.normal(
        size=parts.shape) * np.sqrt(process)[:, None]
  return jnp.asarray(inputs), jnp.asarray(targets)
