r"""Empirical Bayes on a warm-up window: the prior's scale chosen by the data.

The Bayesian multiscale learner (Jones, Scott, Ren, ElSayed, Hermann, Mayo &
Mozer, "Learning in temporally structured environments", ICLR 2023) is only
as good as its prior's scale relative to the noise. :func:`fit_prior` runs
the learner over a window of warm-up batches for a grid of scales (and,
optionally, spectral slopes) at once, scores each by the window's predictive
likelihood, and returns the best prior: type-II maximum likelihood, with the
noise variance profiled out for a Gaussian observation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax
from jax.typing import ArrayLike

from multiscale_optax._src import ar1_prior
from multiscale_optax._src import bayesian
from multiscale_optax._src import bayesian_observations
from multiscale_optax._src import checks
from multiscale_optax._src import gaussian_belief

# bayesian_multiscale's options that fit_prior passes on; the others are
# fit_prior's own or make no sense on a fixed grid.
_PASSED_OPTIONS = ('variance_update', 'outlier_threshold', 'state_dtype')
SCORES = ('profile', 'log_loss')


class PriorFit(NamedTuple):
  r"""The result of :func:`fit_prior`.

  Attributes:
    prior: the chosen :class:`AR1Prior`: the given one with process and
      initial variances multiplied by :math:`\rho\, c\, w_i(p)`.
    noise_variance: :math:`\rho r`, the noise variance to use with it
      (``noise_variance`` unchanged for ``score='log_loss'``).
    scores: the window's score at every grid point (higher is better):
      shape ``(len(scales),)``, or ``(len(slopes), len(scales))`` where
      ``slopes`` was given.
    scales: the grid of :math:`c`.
    slopes: the grid of :math:`p` (``None`` where not searched).
    process_scale: the chosen :math:`c`.
    slope: the chosen :math:`p` (``None`` where not searched).
    noise_scale: :math:`\rho`, the profiled noise scale at the chosen point
      (1 for ``score='log_loss'``).
    at_grid_edge: whether the chosen :math:`c` (or :math:`p`) is an end
      of its grid, where a wider grid may score higher.
  """

  prior: ar1_prior.AR1Prior
  noise_variance: float
  scores: np.ndarray
  scales: np.ndarray
  slopes: np.ndarray | None
  process_scale: float
  slope: float | None
  noise_scale: float
  at_grid_edge: bool


def _grid(values: Any, name: str) -> np.ndarray:
  entries = checks.concrete_vector_entries(values, name)
  checks.check_finite(entries, name)
  return np.asarray(entries, np.float64)


def _slope_weights(prior: ar1_prior.AR1Prior, slope: float) -> np.ndarray:
  r""":math:`w_i(p) = (\tau_i/\tau_{ref})^{-p}` per component.

  :math:`\tau_{ref}` is the geometric mean of the finite timescales; a
  random walk (:math:`\gamma = 1`) takes the longest finite timescale's
  weight.
  """
  timescales = np.asarray(prior.timescales, np.float64)
  finite = timescales[np.isfinite(timescales)]
  if finite.size == 0:
    raise ValueError(
        '`slopes` needs at least one component with a finite timescale '
        '(a decay in (0, 1)); every decay of `prior` is 1.')
  reference = np.exp(np.mean(np.log(finite)))
  timescales = np.where(np.isfinite(timescales), timescales, finite.max())
  return (timescales / reference) ** (-slope)


def _split_output(output: Any) -> tuple[Any, Any, dict[str, Any]]:
  """``observe``'s output as ``(info or None, grads, extra)``."""
  if isinstance(output, tuple) and len(output) == 3 and isinstance(
      output[0], bayesian_observations.ObservationInfo):
    return output
  if isinstance(output, tuple) and len(output) == 2:
    return (None, *output)
  raise TypeError(
      '`observe(params, batch)` must return (grads, extra) or (info, grads, '
      'extra) as gaussian_observation and categorical_observation do, got '
      f'{type(output).__name__}.')


def _check_observation(
    observe: Callable[..., Any], params: optax.Params, batch: Any,
    score: str) -> None:
  """Checks ``observe``'s output on one batch, without computing it."""
  info, _, extra = _split_output(jax.eval_shape(observe, params, batch))
  if not isinstance(extra, dict):
    raise TypeError('`observe` must return its extra arguments as a dict.')
  if score == 'log_loss' and info is None:
    raise ValueError(
        "score='log_loss' needs `observe` to return (info, grads, extra), "
        'the ObservationInfo first (as categorical_observation does): its '
        'loss is the score.')
  if score == 'profile':
    if extra.get('residual') is None:
      raise ValueError(
          "score='profile' needs the residual among `observe`'s extra "
          'arguments (gaussian_observation passes it).')
    if isinstance(extra.get('pseudo_residual'),
                  gaussian_belief.PseudoResidual) or extra.get(
                      'pseudo_residual') is True:
      raise ValueError(
          "score='profile' reads the residual as a prediction error, but "
          "this observation's is a pseudo-residual (categorical_observation "
          "with fisher='sampled' or 'empirical'); use score='log_loss'.")


def _check_window(batches: Any) -> None:
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise ValueError('`batches` is empty: it needs at least one array.')
  lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1
             for leaf in leaves}
  if -1 in lengths or len(lengths) != 1:
    raise ValueError(
        '`batches` must have a leading time axis of the same length on '
        f'every leaf, got lengths {sorted(lengths)} (-1: a scalar).')
  if lengths == {0}:
    raise ValueError('`batches` is an empty window (0 batches): fit_prior '
                     'needs at least one observation.')


def fit_prior(
    observe: Callable[[Any, Any], Any],
    params: optax.Params,
    batches: Any,
    prior: ar1_prior.AR1Prior,
    noise_variance: ArrayLike,
    *,
    rank: int = 0,
    scales: npt.ArrayLike | None = None,
    slopes: npt.ArrayLike | None = None,
    score: Literal['profile', 'log_loss'] = 'profile',
    **options: Any,
) -> PriorFit:
  r"""Chooses the scale of a Bayesian multiscale prior on a warm-up window.

  Let :math:`(\gamma_i, q_i, v_i)` be ``prior``, :math:`r` be
  ``noise_variance``, :math:`c_j` the entries of ``scales`` and :math:`p`
  those of ``slopes``. For every grid point the learner
  :func:`bayesian_multiscale` with process and initial variances
  :math:`c\, w_i(p)\, q_i` and :math:`c\, w_i(p)\, v_i`, where

  .. math::

    w_i(p) = (\tau_i/\tau_{ref})^{-p}

  (:math:`\tau_{ref}` the geometric mean of the finite timescales: with
  :meth:`AR1Prior.from_timescales`, whose spectrum is :math:`1/f`, a slope
  :math:`p` makes it :math:`1/f^{1-p}`), starts at ``params`` and runs over
  ``batches``, each observation predicted before it is learned. All grid
  points run in one ``jax.vmap`` of one ``lax.scan``.

  ``score='profile'`` (a Gaussian observation, :math:`R \propto r`): scaling
  the process, initial and noise variances together by :math:`\rho` changes
  no mean, so :math:`\rho` is profiled out. With :math:`z_t = e_t^\top
  S_t^{-1} e_t` over the :math:`n = \sum_t N_t` outputs of the window,
  :math:`\hat\rho = \frac1n \sum_t z_t` and the score is the profile
  log-likelihood

  .. math::

    -\tfrac12\Big(\sum_t \log\det S_t + n\log\hat\rho
      + n(1 + \log 2\pi)\Big);

  the chosen prior is scaled by :math:`\hat\rho` as well, and the noise
  variance is :math:`\hat\rho r`. ``score='log_loss'`` (classification:
  :func:`categorical_observation`, whose noise is fixed by the predicted
  probabilities) scores the negative summed online log-loss
  ``-sum(info.loss)``.

  **Cost**: (grid points) × (window length) updates of the learner, run as
  one vectorised scan (memory: one state per grid point), plus one call of
  ``observe`` per update.

  Args:
    observe: ``observe(params, batch)`` returns ``(grads, extra)`` or
      ``(info, grads, extra)``: the learner's gradient and its extra
      arguments as a dict (what :func:`gaussian_observation` and
      :func:`categorical_observation` return, e.g. ``functools.partial``
      of them with the model and noise bound; or ``jacobian=`` and
      ``residual=`` for a linear model).
    params: the initial params (the prior mean).
    batches: a pytree of warm-up batches with a leading time axis (at
      least one batch).
    prior: the :class:`AR1Prior` to scale.
    noise_variance: :math:`r > 0`.
    rank: the belief's rank (as :func:`bayesian_multiscale`).
    scales: the grid of :math:`c > 0` (default :math:`10^{-3}, 10^{-2.5},
      \dots, 10^5`).
    slopes: optionally, the grid of :math:`p` (finite); needs decays in
      :math:`(0, 1]`.
    score: ``'profile'`` or ``'log_loss'`` (above).
    **options: passed to :func:`bayesian_multiscale`:
      ``variance_update``, ``outlier_threshold``, ``state_dtype``.

  Returns:
    A :class:`PriorFit`.

  Raises:
    TypeError: ``prior`` is not an :class:`AR1Prior`, an option is not
      one of the above, or ``observe`` returns something else.
    ValueError: the window is empty, the grid has one point, a grid value
      is out of range, ``score`` is unknown or does not apply to the
      observation, or a score is not finite (the message names the grid
      points).

  Examples:
    A linear model on a drifting stream:

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import multiscale_optax as mso
    >>> rng = np.random.default_rng(0)
    >>> inputs = jnp.asarray(rng.normal(size=(200, 3)))
    >>> targets = inputs @ jnp.ones(3) + 0.1 * jnp.asarray(
    ...     rng.normal(size=200))
    >>> def observe(params, batch):
    ...   x, y = batch
    ...   residual = y - x @ params
    ...   return -x * residual, {'jacobian': x, 'residual': residual}
    >>> prior = mso.AR1Prior.from_timescales([10.0, 100.0])
    >>> fit = mso.fit_prior(observe, jnp.zeros(3), (inputs, targets), prior,
    ...                     1.0, scales=[0.01, 1.0, 100.0])
    >>> print(fit.scores.shape, fit.process_scale in (0.01, 1.0, 100.0))
    (3,) True

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023. Jones, `Learning at Multiple
    Timescales <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022.
  """
  if not isinstance(prior, ar1_prior.AR1Prior):
    raise TypeError(
        f'`prior` must be an AR1Prior, got {type(prior).__name__}.')
  if not callable(observe):
    raise TypeError('`observe` must be a function observe(params, batch).')
  unknown = sorted(set(options) - set(_PASSED_OPTIONS))
  if unknown:
    raise TypeError(
        f'fit_prior got the unexpected option(s) {", ".join(unknown)}; it '
        f'passes only {", ".join(_PASSED_OPTIONS)} to bayesian_multiscale.')
  if score not in SCORES:
    raise ValueError(
        f'`score` must be one of {", ".join(map(repr, SCORES))}, got '
        f'{score!r}.')
  checks.check_scalar(noise_variance, 'noise_variance', low=0.0,
                      high=np.inf, low_inclusive=False, high_inclusive=False)
  noise = float(noise_variance)  # type: ignore[arg-type]
  scale_grid = _grid(np.logspace(-3.0, 5.0, 17) if scales is None
                     else scales, 'scales')
  checks.check_range(list(scale_grid), 'scales', low=0.0, high=np.inf,
                     low_inclusive=False, high_inclusive=False)
  slope_grid = None if slopes is None else _grid(slopes, 'slopes')
  searched_slopes = np.zeros(1) if slope_grid is None else slope_grid
  if scale_grid.size * searched_slopes.size < 2:
    raise ValueError(
        'The grid of `scales` (and `slopes`) has one point: fit_prior needs '
        'at least two to choose between.')
  _check_window(batches)
  first_batch = jax.tree.map(lambda leaf: leaf[0], batches)
  _check_observation(observe, params, first_batch, score)
  weights = np.stack([
      np.ones(prior.num_components) if slope_grid is None
      else _slope_weights(prior, slope) for slope in searched_slopes])
  multipliers = (weights[:, None, :] * scale_grid[None, :, None]).reshape(
      -1, prior.num_components)
  totals = _run_grid(observe, params, batches, prior, noise, rank,
                     multipliers, options)
  squared, log_determinant, outputs, losses = (
      np.asarray(total, np.float64) for total in totals)
  if score == 'profile':
    noise_scales = squared / np.maximum(outputs, 1)
    with np.errstate(divide='ignore', invalid='ignore'):
      scores = -0.5 * (log_determinant + outputs * np.log(noise_scales)
                       + outputs * (1.0 + np.log(2.0 * np.pi)))
  else:
    noise_scales = np.ones_like(losses)
    scores = -losses
  scores = np.where(outputs > 0, scores, np.nan)
  bad = np.flatnonzero(~np.isfinite(scores))
  if bad.size:
    points = [_grid_point(index, scale_grid, slope_grid) for index in bad[:5]]
    raise ValueError(
        f'fit_prior: the score is not finite at {len(bad)} grid point(s) '
        f'({"; ".join(points)}): the filter diverged or saw no valid '
        'observation there; narrow `scales` (or `slopes`).')
  best = int(np.argmax(scores))
  slope_index, scale_index = divmod(best, scale_grid.size)
  rho = float(noise_scales[best])
  factors = rho * multipliers[best]
  fitted = ar1_prior.AR1Prior(
      decays=prior.decays,
      process_variances=tuple(
          float(f * q) for f, q in zip(factors, prior.process_variances)),
      initial_variances=tuple(
          float(f * v) for f, v in zip(factors, prior.initial_variances or ())))
  edge = scale_index in (0, scale_grid.size - 1) or (
      slope_grid is not None and slope_index in (0, slope_grid.size - 1))
  return PriorFit(
      prior=fitted,
      noise_variance=rho * noise,
      scores=scores.reshape(searched_slopes.size, scale_grid.size)
      if slope_grid is not None else scores,
      scales=scale_grid,
      slopes=slope_grid,
      process_scale=float(scale_grid[scale_index]),
      slope=None if slope_grid is None else float(slope_grid[slope_index]),
      noise_scale=rho,
      at_grid_edge=bool(edge),
  )


def _grid_point(
    index: int, scales: np.ndarray, slopes: np.ndarray | None) -> str:
  slope_index, scale_index = divmod(int(index), scales.size)
  text = f'scale {scales[scale_index]:.3g}'
  if slopes is not None:
    text += f', slope {slopes[slope_index]:.3g}'
  return text


def _run_grid(
    observe: Callable[[Any, Any], Any], params: optax.Params, batches: Any,
    prior: ar1_prior.AR1Prior, noise: float, rank: int,
    multipliers: np.ndarray, options: dict[str, Any],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Sums of the scores over the window, one per row of ``multipliers``."""
  runner = _grid_runner(
      observe, prior.decays, prior.process_variances,
      prior.initial_variances or (), noise, rank,
      tuple(sorted(options.items())))
  multiplier_dtype = jnp.result_type(*(
      leaf.dtype for leaf in jax.tree.leaves(params)))
  return runner(params, batches, jnp.asarray(multipliers, multiplier_dtype))


@functools.lru_cache(maxsize=8)
def _grid_runner(
    observe: Callable[[Any, Any], Any], decays: tuple[Any, ...],
    process_variances: tuple[Any, ...], initial_variances: tuple[Any, ...],
    noise: float, rank: int, options: tuple[tuple[str, Any], ...],
) -> Callable[..., tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
  """The jitted grid run ``(params, batches, multipliers) -> sums``, kept
  for the next call with the same observation and prior (a refit on a
  later window, or another seed, compiles nothing)."""
  settings = dict(options)
  process = jnp.asarray(process_variances)
  initial = jnp.asarray(initial_variances)

  def run(params: Any, batches: Any,
          multiplier: jax.Array) -> tuple[jax.Array, ...]:
    init, scored_update = bayesian._scored_learner(
        ar1_prior.AR1Prior(decays, tuple(process * multiplier),
                           tuple(initial * multiplier)), noise, rank=rank,
        variance_update=settings.get('variance_update'),
        learn_prior=False, learn_noise_variance=False,
        prior_learning_rate=0.0, prior_window=100.0,
        outlier_threshold=settings.get('outlier_threshold'),
        state_dtype=settings.get('state_dtype'))

    def step(carry: Any, batch: Any) -> tuple[Any, tuple[jax.Array, ...]]:
      current, state = carry
      info, grads, extra = _split_output(observe(current, batch))
      updates, state, seen = scored_update(grads, state, current, **extra)
      loss = jnp.zeros([]) if info is None else jnp.sum(info.loss)
      return (optax.apply_updates(current, updates), state), (
          seen.squared_residual, seen.log_determinant, seen.outputs, loss)

    _, seen = jax.lax.scan(step, (params, init(params)), batches)
    return tuple(jnp.sum(value.astype(
        jnp.int32 if value.dtype == jnp.int32 else jnp.result_type(
            float)), axis=0) for value in seen)

  return jax.jit(jax.vmap(run, in_axes=(None, None, 0)))
