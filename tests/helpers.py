"""Shared test helpers: a small MLP problem and optimizer-trajectory runners."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


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


def run_trajectory(
    optimizer: optax.GradientTransformation,
    params,
    batches,
    loss_fn: Callable = mlp_loss,
):
  """Runs ``optimizer`` over ``batches`` under ``jax.lax.scan``.

  Returns the stacked params after every step (leading axis: step).
  """
  grad_fn = jax.grad(loss_fn)

  def step(carry, batch):
    params, state = carry
    grads = grad_fn(params, *batch)
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), params

  _, history = jax.lax.scan(step, (params, optimizer.init(params)), batches)
  return history


def max_abs_difference(first, second) -> float:
  """Largest absolute difference between two pytrees of arrays."""
  differences = jax.tree.leaves(
      jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), first, second))
  return float(max(differences))
