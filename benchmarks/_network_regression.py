r"""Online regression of networks on stacked streams: models and scores.

The library side of ``online_teacher.py`` and ``online_rotation.py``: both
run one-example-per-step learners on streams stacked on a leading seed axis
(fields ``initial_params``, ``inputs``, ``targets`` and ``outputs``, the
noise-free target), tune them with :func:`benchmarks.harness.tune_and_evaluate`
and report their online predictions.

A learner's ``build(point)`` returns a :class:`Model`. Its ``predict(hyper,
stream)`` takes the hyperparameters as a dict of (traced) scalars, so that
:func:`make_score` runs a whole grid vmapped in one compilation; the point
passed to ``build`` is not used. A model that is not one jittable function
of a stream (``fit_prior`` fits each stream before running it) has ``run``
instead. Streams are float64: call these inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import multiscale_optax as mso
from benchmarks import _drifting_teacher as teacher
from benchmarks import harness


class Model(NamedTuple):
  """What a learner's ``build`` returns.

  Attributes:
    predict: ``predict(hyper, stream)`` -> the online predictions of one
      stream, ``(T,)``, or a pair ``(predictions, values)`` with a dict of
      learned values to report (per stream; stacked over seeds). Jittable;
      ``hyper`` holds the grid point's values as arrays.
    run: ``run(streams)`` -> predictions ``(seeds, T)`` and a dict of row
      fields, for a model that runs on the stacked streams outside ``jit``
      (``predict`` is then ``None`` and the learner has no grid).
  """

  predict: Callable[[Mapping[str, Any], Any], Any] | None = None
  run: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None


def learner(label: str, model: Model, *, id: str | None = None,
            grid: Mapping[str, Sequence[Any]] | None = None,
            refine_key: str | None = None, **fields: Any) -> harness.Learner:
  """A ``harness.Learner`` whose ``build`` returns ``model``; ``refine_key``
  is refined on a 9-point log grid around its best coarse value, ``fields``
  go to the Learner unchanged (``note``, ``meta``, ``reuse``)."""
  return harness.Learner(
      id=id or harness.slug(label), label=label,
      build=lambda point: model, grid=dict(grid or {}),
      refine={refine_key: {'scale': 'log', 'num': 9}} if refine_key else {},
      **fields)


def predict_all(predict: Callable[[Any, Any], Any], hyper: Any,
                streams: Any) -> Any:
  """Predictions of ``predict(hyper, stream)`` for every seed (vmapped)."""
  return jax.vmap(lambda stream: predict(hyper, stream))(streams)


def excess_errors(predictions: jax.Array, streams: Any) -> jax.Array:
  """Per seed (and grid point): the mean of :math:`(\\hat y_t - f(x_t;
  w_t))^2` over the steps (``streams.outputs`` is :math:`f(x_t; w_t)`)."""
  return jnp.mean(jnp.square(predictions - streams.outputs), axis=-1)


def make_score(streams: Mapping[tuple[int, ...], Any]) -> harness.Score:
  """The harness's score: the excess error of every grid point and seed.

  ``streams`` maps a tuple of seeds to their stacked streams; the grid
  points run vmapped (``jax.lax.map`` over the grid, all in one batch).
  """

  @functools.partial(jax.jit, static_argnums=0)
  def errors(predict, grid, streams):
    def loss(hyper):
      return excess_errors(predict_all(predict, hyper, streams), streams)

    return jax.lax.map(loss, grid, batch_size=len(jax.tree.leaves(grid)[0]))

  def score(learner_, points, seeds):
    grid = {name: jnp.asarray([point[name] for point in points])
            for name in points[0]}
    return np.asarray(errors(learner_.build(points[0]).predict, grid,
                             streams[tuple(seeds)]))

  return score


def predictions(learner_: harness.Learner, point: Mapping[str, Any],
                streams: Any) -> tuple[np.ndarray, dict[str, Any]]:
  """The chosen point's predictions on ``streams``, ``(seeds, T)``, and the
  learned values the model reports (per seed), as numpy."""
  model = learner_.build(dict(point))
  if model.run is not None:
    values, fields = model.run(streams)
    return np.asarray(values), fields
  chosen = jax.tree.map(jnp.asarray, dict(point))
  output = jax.jit(lambda streams: predict_all(model.predict, chosen,
                                               streams))(streams)
  values, learned = output if isinstance(output, tuple) else (output, {})
  return np.asarray(values), {name: np.asarray(value)
                              for name, value in learned.items()}


def optax_predict(optimizer: Callable[[Mapping[str, Any]], Any], *,
                  noise_variance: float = 1.0, jacobian: bool = False,
                  keep: Callable[[Any], dict[str, Any]] | None = None,
                  ) -> Callable[[Mapping[str, Any], Any], Any]:
  """``predict(hyper, stream)`` of ``optimizer(hyper)`` on the MLP of
  ``_drifting_teacher.run_online`` from the stream's initial params.

  ``noise_variance`` and ``jacobian``: as ``run_online``'s
  ``noise_variance`` and ``pass_jacobian``. ``keep(state)`` -> a dict of
  learned values recorded every step; with it ``predict`` returns
  ``(predictions, values at the last step)``.
  """

  def predict(hyper, stream):
    output, records = teacher.run_online(
        teacher.mlp_apply, stream.initial_params, optimizer(hyper),
        stream.inputs, stream.targets, noise_variance=noise_variance,
        pass_jacobian=jacobian,
        keep_state=None if keep is None else lambda params, state: keep(
            state))
    if keep is None:
      return output
    return output, {name: value[-1] for name, value in records.items()}

  return predict


def fit_prior_model(prior: mso.AR1Prior, noise_variance: float, rank: int,
                    warmup: int, scales: Sequence[float]) -> Model:
  """``_drifting_teacher.fit_and_run`` as a :class:`Model`: per stream,
  ``mso.fit_prior`` on its first ``warmup`` steps over ``scales``, then the
  fitted prior from the start; reports the fitted scales."""

  def run(streams):
    values, fits = teacher.fit_and_run(prior, noise_variance, rank, streams,
                                       warmup, scales)
    return values, {
        'fitted_scale': [fit.process_scale for fit in fits],
        'fitted_noise_scale': [fit.noise_scale for fit in fits],
        'fit_at_grid_edge': [fit.at_grid_edge for fit in fits]}

  return Model(run=run)


def state_arrays_per_param(optimizer: Any, params: Any) -> float:
  """Floats of ``optimizer``'s state per param (counts and scalars too);
  ``params`` may be abstract (``jax.ShapeDtypeStruct`` leaves)."""
  shapes = jax.eval_shape(optimizer.init, params)
  size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
  return size / sum(int(np.prod(leaf.shape))
                    for leaf in jax.tree.leaves(params))
