r"""What the real-stream benchmarks share: models, scaling, runners, priors.

``trump_approval.py`` and ``river_datasets.py`` run learners on river's
tabular streams under river's progressive-validation protocol: each example
is predicted, scored, then learnt from, in one pass. This module holds what
both use:

* the default prior of ``bayesian_multiscale`` (:func:`default_prior`),
  fixed before either benchmark was first run, and the scales
  ``fit_prior`` searches (:data:`FIT_SCALES`);
* river's ``TargetStandardScaler`` computed online (:func:`target_scaling`);
* the two models (a linear model and a small tanh MLP, :data:`MODELS`);
* the step functions of a gradient learner and of a Bayesian learner
  (:func:`gradient_step`, :func:`bayesian_step`);
* the runner (:func:`make_runner`): a jitted scan over the stream, vmapped
  over the grid points and the initialisation seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso

# The default prior's timescales (for standardised features and targets):
# 10^(0, 0.5, ..., 4) steps.
DEFAULT_TIMESCALES = tuple(float(t) for t in np.logspace(0.0, 4.0, 9))
# fit_prior's grid of the prior's scale c.
FIT_SCALES = tuple(float(c) for c in np.logspace(-2.0, 5.0, 15))


def default_prior() -> mso.AR1Prior:
  r"""The default prior: a random-walk permanent part, then 9 AR(1) parts.

  Timescales :math:`\tau_i` = :data:`DEFAULT_TIMESCALES`; process variances
  :math:`q_i = c/\tau_i`; the permanent part (decay 1, first) has the
  slowest subweight's :math:`q` and starts with its stationary variance;
  :math:`c` makes the ten initial variances sum to 1.
  """
  timescales = np.asarray(DEFAULT_TIMESCALES)
  ar_decays = np.exp(-1.0 / timescales)
  slowest = np.max(timescales)
  # Unscaled (c = 1): q_i = 1 / tau_i; the permanent part's q and initial
  # variance are the slowest subweight's.
  process = np.concatenate([[1.0 / slowest], 1.0 / timescales])
  stationary = (1.0 / timescales) / (1.0 - ar_decays**2)
  initial = np.concatenate([[stationary[np.argmax(timescales)]], stationary])
  scale = 1.0 / np.sum(initial)
  decays = np.concatenate([[1.0], ar_decays])
  return mso.AR1Prior(decays, scale * process, scale * initial)


def target_scaling(targets: np.ndarray):
  """Running (mean, sd) of the targets before and including each example.

  As river's ``TargetStandardScaler``: population variance, and sd 1 while
  the variance is 0. Returns ``((mean, sd) before, (mean, sd) after)``,
  each of shape ``(n,)``.
  """
  targets = np.asarray(targets, np.float64)
  mean, sd = np.empty_like(targets), np.empty_like(targets)
  running, squares = 0.0, 0.0  # Welford's running mean and sum of squares
  for index, target in enumerate(targets):
    delta = target - running
    running += delta / (index + 1)
    squares += delta * (target - running)
    mean[index] = running
    sd[index] = np.sqrt(squares / (index + 1)) if squares > 0.0 else 1.0
  before_mean = np.concatenate([[0.0], mean[:-1]])
  before_sd = np.concatenate([[1.0], sd[:-1]])
  return (before_mean, before_sd), (mean, sd)


# ---------------------------------------------------------------------------
# Models: init(key, num_features, hidden, outputs) and apply(params, inputs).
# One output is a scalar (regression), several are logits.


def linear_init(key: jax.Array, num_features: int, hidden: int,
                outputs: int = 1) -> dict:
  del key, hidden
  shape = (num_features,) if outputs == 1 else (num_features, outputs)
  return {'w': jnp.zeros(shape),
          'b': jnp.zeros(() if outputs == 1 else (outputs,))}


def linear_apply(params: dict, inputs: jax.Array) -> jax.Array:
  return inputs @ params['w'] + params['b']


def mlp_init(key: jax.Array, num_features: int, hidden: int,
             outputs: int = 1) -> dict:
  first, second = jax.random.split(key)
  out_shape = (hidden,) if outputs == 1 else (hidden, outputs)
  return {
      'hidden': {'w': jax.random.normal(first, (num_features, hidden))
                      / np.sqrt(num_features),
                 'b': jnp.zeros(hidden)},
      'out': {'w': jax.random.normal(second, out_shape) / np.sqrt(hidden),
              'b': jnp.zeros(() if outputs == 1 else (outputs,))},
  }


def mlp_apply(params: dict, inputs: jax.Array) -> jax.Array:
  hidden = jnp.tanh(inputs @ params['hidden']['w'] + params['hidden']['b'])
  return hidden @ params['out']['w'] + params['out']['b']


MODELS = {'linear': (linear_init, linear_apply),
          'mlp': (mlp_init, mlp_apply)}


# ---------------------------------------------------------------------------
# Steps: (init, step), step(params, state, learn_input, target) -> (params,
# state), where the target is a (scaled) regression target or a class index.


def loss(apply_fn: Callable, classification: bool = False) -> Callable:
  """The softmax cross-entropy, or the squared error :math:`(y - \\hat
  y)^2/2`, as ``loss(params, inputs, target)``."""
  if classification:
    def cross_entropy(params, inputs, label):
      return optax.softmax_cross_entropy_with_integer_labels(
          apply_fn(params, inputs), label)
    return cross_entropy

  def squared_error(params, inputs, target):
    return 0.5 * (apply_fn(params, inputs) - target) ** 2
  return squared_error


def gradient_step(transform: optax.GradientTransformation,
                  loss_fn: Callable) -> tuple[Callable, Callable]:
  """``transform`` following the gradient of ``loss_fn``."""
  grad = jax.grad(loss_fn)

  def step(params, state, inputs, target):
    updates, state = transform.update(grad(params, inputs, target), state,
                                      params)
    return optax.apply_updates(params, updates), state
  return transform.init, step


def observation(apply_fn: Callable, classification: bool = False,
                noise_variance: Any = 1.0) -> Callable:
  """``(params, inputs, target) -> (info, grads, extra)``: the softmax or
  the Gaussian observation of a Bayesian learner."""
  if classification:
    return lambda params, inputs, target: mso.categorical_observation(
        apply_fn, params, inputs, target)
  return lambda params, inputs, target: mso.gaussian_observation(
      apply_fn, params, inputs, target, noise_variance)


def bayesian_step(transform: optax.GradientTransformationExtraArgs,
                  observe: Callable) -> tuple[Callable, Callable]:
  """``transform`` (a Bayesian learner) fed ``observe``'s gradient and
  extra arguments."""
  def step(params, state, inputs, target):
    _, grads, extra = observe(params, inputs, target)
    updates, state = transform.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state
  return transform.init, step


@functools.cache
def batch_observer(model: str, classification: bool = False) -> Callable:
  """``observe(params, (inputs, target))`` for ``fit_prior``, :math:`r = 1`
  (the same function for every call, so that ``fit_prior`` compiles once
  per model)."""
  observe = observation(MODELS[model][1], classification)

  def observe_batch(params, batch):
    info, grads, extra = observe(params, *batch)
    return (info, grads, extra) if classification else (grads, extra)
  return observe_batch


# ---------------------------------------------------------------------------
# The runner.


def make_runner(build: Callable[[dict[str, Any]], Callable], model: str,
                views: Sequence[np.ndarray], *, hidden: int,
                outputs: int = 1, scale_targets: bool = False,
                record: Callable[..., Any]) -> Callable:
  """A jitted function ``(points, keys) -> records (h, s, n)``.

  Args:
    build: a grid point (dict of traced scalars) -> ``make_step(apply_fn)
      -> (init, step)`` (the ``build`` of a ``harness.Learner``).
    model: a key of :data:`MODELS`.
    views: ``(predict_inputs, learn_inputs, targets)``: the features the
      prediction sees, those the model learns from, and the raw targets or
      class indices.
    hidden: the MLP's width.
    outputs: 1 (regression) or the number of classes.
    scale_targets: whether regression targets are standard-scaled online
      (:func:`target_scaling`): the output ``f`` predicts ``m + s f`` and
      the model learns ``(y - m) / s``.
    record: ``record(output, target, mean, sd, state) -> value`` after every
      example (``mean``, ``sd``: the target scaling before the example).

  Returns:
    ``run(points, keys)``: ``points`` a list of ``h`` grid points (dicts of
    numbers with the same keys, possibly none), ``keys`` ``(s,)`` PRNG
    keys.
  """
  init_fn, apply_fn = MODELS[model]
  predict_inputs, learn_inputs, targets = views
  classification = outputs > 1
  if scale_targets:
    before, after = target_scaling(targets)
  else:
    zeros = np.zeros(len(targets))
    before = after = (zeros, zeros + 1.0)
  data = (jnp.asarray(predict_inputs), jnp.asarray(learn_inputs),
          jnp.asarray(targets), tuple(map(jnp.asarray, before)),
          tuple(map(jnp.asarray, after)))

  def single(point, key):
    init, step = build(point)(apply_fn)
    params = init_fn(key, predict_inputs.shape[1], hidden, outputs)

    def body(carry, example):
      params, state = carry
      predict_input, learn_input, target, (m0, s0), (m1, s1) = example
      output = apply_fn(params, predict_input)
      learn_target = target if classification else (target - m1) / s1
      params, state = step(params, state, learn_input, learn_target)
      return (params, state), record(output, target, m0, s0, state)

    _, records = jax.lax.scan(body, (params, init(params)), data)
    return records

  over_keys = jax.vmap(single, in_axes=(None, 0))
  # The grid index carries the points' axis where a point has no entries.
  over_points = jax.jit(jax.vmap(lambda point, _, keys: over_keys(point, keys),
                                 in_axes=(0, 0, None)))

  def run(points: Sequence[dict[str, Any]], keys: jax.Array):
    values = {name: jnp.asarray([point[name] for point in points])
              for name in points[0]}
    return over_points(values, jnp.arange(len(points)), keys)
  return run
