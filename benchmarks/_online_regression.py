r"""The online linear-regression loop: predict each target, then learn.

A linear model :math:`\hat y_t = x_t \cdot w` predicts each target of a
stream :math:`(x_t, y_t)`, then an optimizer learns from it. With a
Bayesian learner (``mso.bayesian_multiscale``) the update gets the gradient
of :math:`(y_t - x_t \cdot w)^2 / (2 r)` and the extra arguments
``jacobian=x`` and ``residual=y - x.w`` (the exact linear-Gaussian
observation); a plain optax optimizer gets the same gradient alone.

One implementation for the benchmarks (``per_weight_drift.py``) and the
tests (``tests/helpers.py``). It is traceable: jit or vmap it as needed.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class OnlineRun(NamedTuple):
  r"""What :func:`online_regression` returns.

  Attributes:
    predictions: (steps,) each :math:`x_t \cdot w` before learning
      :math:`y_t`.
    params: the final weights.
    state: the final optimizer state.
    collected: ``collect(state)`` after every step (stacked), or ``None``.
  """

  predictions: jax.Array
  params: jax.Array
  state: Any
  collected: Any


def online_regression(
    optimizer: optax.GradientTransformation, inputs: jax.Array,
    targets: jax.Array, noise_variance: Any = 1.0, *,
    params: jax.Array | None = None,
    log_process_scale: Any = None,
    collect: Callable[[Any], Any] | None = None,
    extra_args: Sequence[str] = ('jacobian', 'residual')) -> OnlineRun:
  r"""Run ``optimizer`` over the stream ``(inputs, targets)``.

  Args:
    optimizer: the learner.
    inputs: (steps, d) features :math:`x_t`.
    targets: (steps,) targets :math:`y_t`.
    noise_variance: :math:`r` of the gradient
      :math:`-x_t (y_t - x_t \cdot w) / r`.
    params: the initial weights (default zeros).
    log_process_scale: per-weight log scales of a Bayesian learner's prior
      to start from (its state's ``log_process_scale``; with
      ``learn_prior='per_weight'`` and a zero rate: scales set, not
      learned).
    collect: ``collect(state)`` is recorded after every step.
    extra_args: the extra arguments of each update, of ``('jacobian',
      'residual')``; ``()`` for a plain optax optimizer.

  Returns:
    The :class:`OnlineRun`.
  """
  if params is None:
    params = jnp.zeros(inputs.shape[-1], inputs.dtype)
  state = optimizer.init(params)
  if log_process_scale is not None:
    state = state._replace(log_process_scale=jnp.asarray(
        log_process_scale, state.log_process_scale.dtype))

  def step(carry, example):
    params, state = carry
    x, y = example
    prediction = x @ params
    error = y - prediction
    extra = {'jacobian': x, 'residual': error}
    updates, state = optimizer.update(
        -x * error / noise_variance, state, params,
        **{name: extra[name] for name in extra_args})
    recorded = None if collect is None else collect(state)
    return (optax.apply_updates(params, updates), state), (
        prediction, recorded)

  (params, state), (predictions, collected) = jax.lax.scan(
      step, (params, state), (inputs, targets))
  return OnlineRun(predictions, params, state, collected)
