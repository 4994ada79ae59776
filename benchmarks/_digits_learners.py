r"""The learners of the digits benchmarks, as :class:`harness.Learner` entries.

A library module: ``online_digits`` takes its registry from
:func:`learners`, and ``fisher_observations`` builds its fixed Bayesian
learner with :func:`bayesian`; it imports no script.

Each learner's ``build(point)`` returns an optax transformation for one grid
point (the grid value may be traced: it is vmapped over). Its ``fixed``
entries say how it observes a batch: ``observation`` (``'gradient'``: the
gradient of the mean cross-entropy; ``'categorical'``: the Bayesian
learners, one example at a time through
``multiscale_optax.categorical_observation``), ``fisher`` (that
observation's ``fisher``) and ``rank`` (the Bayesian learner's rank, read
by ``fit_prior`` too). Its ``meta`` says how it is chosen: ``shared_choice``
(one grid point for every stream, by the best mean tuning accuracy over all
streams) and ``fit_prior`` (no tuning: the prior's scale of each run is
chosen by ``multiscale_optax.fit_prior`` on the run's first
:data:`FIT_WARMUP` steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso
from benchmarks import harness

# Timescales of multiscale-Adam: log-spaced from a few steps up to the
# length of a few recurring blocks, plus a permanent (decay 1) part.
MULTISCALE_TIMESCALES = (3.0, 1000.0)
MULTISCALE_NUM_DECAYING = 5

# The Bayesian learners' prior: the permanent part starts with the variance
# of the hidden layer's He initialisation (2 / fan-in); the decaying
# subweights span (first, last, number) log-spaced timescales in steps.
BAYES_PERMANENT_VARIANCE = 2.0 / 64
BAYES_TIMESCALES = (1.0, 1000.0, 7)
# Grid endpoints (per example): the random walk's process variance of the
# diagonal EKF, and the total drift variance of the multiscale prior; the
# learned-prior row starts from one fixed drift variance.
VD_EKF_PROCESS_VARIANCES = (1e-6, 1e-3)
BAYES_DRIFT_VARIANCES = (1e-3, 1e-1)
BAYES_LEARNED_START = 1e-2
# fit_prior on the first FIT_WARMUP steps of a run (each example one
# observation, as the learner sees them), over the scales FIT_SCALES of the
# prior started at BAYES_LEARNED_START.
FIT_WARMUP = 20
FIT_SCALES = tuple(float(c) for c in np.logspace(-2.0, 2.0, 9))

Build = Callable[[dict[str, Any]], optax.GradientTransformation]


# ---------------------------------------------------------------------------
# Builders: each maps a grid point (its value traced) to a transformation.


def multiscale_decays(shortest: float = MULTISCALE_TIMESCALES[0],
                      longest: float = MULTISCALE_TIMESCALES[1],
                      num: int = MULTISCALE_NUM_DECAYING) -> np.ndarray:
  """A permanent part (decay 1) and ``num`` log-spaced timescales."""
  return np.concatenate([[1.0], mso.decays_from_timescales(
      mso.log_spaced_timescales(shortest, longest, num))])


def multiscale_adam(shortest: float = MULTISCALE_TIMESCALES[0],
                    longest: float = MULTISCALE_TIMESCALES[1],
                    num: int = MULTISCALE_NUM_DECAYING,
                    slow_share: float | None = None, adam_first: bool = True,
                    b1: float = 0.9) -> Build:
  """Adam directions split over a permanent part and ``num`` decaying
  subweights with log-spaced timescales; equal rates unless ``slow_share``
  gives the permanent part's share of the total rate."""
  decays = multiscale_decays(shortest, longest, num)
  if slow_share is None:
    shape = np.full(num + 1, 1.0 / (num + 1))
  else:
    shape = np.concatenate(
        [[slow_share], np.full(num, (1.0 - slow_share) / num)])

  def build(point):
    learning_rate = point['learning_rate']
    rates = learning_rate * jnp.asarray(shape, jnp.float32)
    if adam_first:
      return optax.chain(
          optax.scale_by_adam(b1=b1), mso.multiscale(rates, decays))
    # Multiscale on raw gradients (its output is already a descent
    # increment), then Adam normalising the increments.
    return optax.chain(
        mso.multiscale(rates / learning_rate, decays),
        optax.scale_by_adam(), optax.scale(learning_rate))
  return build


def multiscale_sgd() -> Build:
  """Eq. 1 of the paper on raw gradients (as the paper states it): the same
  subweights and equal rates as :func:`multiscale_adam`, no
  preconditioner."""
  decays = multiscale_decays()
  shape = np.full(len(decays), 1.0 / len(decays))

  def build(point):
    return mso.multiscale(
        point['learning_rate'] * jnp.asarray(shape, jnp.float32), decays)
  return build


def fast_weights(fast_share: float = 0.75, fast_timescale: float = 20.0,
                 adam: bool = True) -> Build:
  """A permanent part and one fast subweight taking ``fast_share`` of the
  rate, on Adam directions or raw gradients."""
  fast_decay = float(mso.decays_from_timescales([fast_timescale])[0])

  def build(point):
    rates = point['learning_rate'] * jnp.asarray(
        [1.0 - fast_share, fast_share], jnp.float32)
    fast = mso.multiscale(rates, [1.0, fast_decay])
    return optax.chain(optax.scale_by_adam(), fast) if adam else fast
  return build


def benna_fusi_adam(num_variables: int = 6) -> Build:
  """Adam directions into the default Benna–Fusi chain."""
  capacities, conductances = mso.benna_fusi_defaults(num_variables)

  def build(point):
    return optax.chain(
        optax.scale_by_adam(),
        mso.benna_fusi(capacities, conductances,
                       learning_rate=point['learning_rate']))
  return build


def bayesian_prior(batch: int, drift_variance: Any,
                   permanent_process_variance: Any = 0.0,
                   timescales: bool = True, scale: Any = 1.0) -> mso.AR1Prior:
  """The Bayesian learners' prior, stated per example.

  A permanent part (decay 1, process variance
  ``permanent_process_variance``, initial variance
  :data:`BAYES_PERMANENT_VARIANCE`) plus, if ``timescales``, AR(1) subweights
  with :data:`BAYES_TIMESCALES` (in steps of ``batch`` examples) started
  stationary, their equal stationary variances summing to
  ``drift_variance``; every process and initial variance times ``scale``
  (the factor ``fit_prior`` chooses). The values may be traced.
  """
  decays = np.concatenate([[1.0], np.exp(-1.0 / (
      np.geomspace(*BAYES_TIMESCALES) * batch))]) if timescales else np.ones(1)
  count = max(len(decays) - 1, 1)
  drift = drift_variance / count if timescales else 0.0
  # q_i = v (1 - gamma_i^2) in float32, as every committed digits result
  # was measured (AR1Prior.from_timescales computes it in float64, which
  # moves the longest timescale's q by ~5e-4 relative and so every Bayesian
  # row); the grid value may be traced, which from_timescales does not take.
  process = jnp.concatenate([
      jnp.reshape(permanent_process_variance, (1,)),
      drift * (1.0 - jnp.asarray(decays[1:]) ** 2)])
  initial = jnp.concatenate([
      jnp.full((1,), BAYES_PERMANENT_VARIANCE),
      drift * jnp.ones(len(decays) - 1)])
  return mso.AR1Prior(tuple(decays.tolist()), scale * process,
                      scale * initial)


def bayesian(batch: int, timescales: bool = True,
             learn_prior: bool = False) -> Build:
  """``bayesian_multiscale`` for the categorical observation with the prior
  of :func:`bayesian_prior` at the point's ``drift_variance``,
  ``process_variance`` (the permanent part's: a random walk; with no
  ``timescales``, the single-timescale diagonal EKF) and ``prior_scale``
  (default 0, 0 and 1), at the point's ``rank`` (0: diagonal)."""

  def build(point):
    rank = point.get('rank', 0) or None
    prior = bayesian_prior(
        batch, point.get('drift_variance', 0.0),
        point.get('process_variance', 0.0), timescales,
        point.get('prior_scale', 1.0))
    # The diagonal rule these rows were measured with (the library's
    # default then), so that the committed results reproduce.
    return mso.bayesian_multiscale(
        prior=prior, noise_variance=1.0, learn_prior=learn_prior, rank=rank,
        variance_update=None if rank else 'moment_matching')
  return build


# ---------------------------------------------------------------------------
# The registry.


def _grid(name: str, low: float, high: float, num: int) -> dict[str, list]:
  """``num`` log-spaced values from ``low`` to ``high`` (one if equal)."""
  return {name: harness.log_grid(low, high, 1 if low == high else num)}


def gradient_learners(num: int, ablations: bool) -> list[harness.Learner]:
  """The learners on gradients of the mean cross-entropy, ``num`` learning
  rates each (and the multiscale-Adam ablations if ``ablations``)."""
  adam, sgd, multiscale = (3e-4, 1e-1), (1e-2, 1.0), (3e-2, 3.0)
  timescales = (f'timescales {MULTISCALE_TIMESCALES[0]:g}..'
                f'{MULTISCALE_TIMESCALES[1]:g} ({MULTISCALE_NUM_DECAYING} '
                'log-spaced), equal rates')
  fast = '1/4 of the rate permanent, 3/4 fast with timescale 20'
  entries = [
      ('sgd', lambda p: optax.sgd(p['learning_rate']), sgd, 'plain SGD'),
      ('sgd_momentum', lambda p: optax.sgd(p['learning_rate'], momentum=0.9),
       (3e-3, 3e-1), 'momentum 0.9'),
      ('adam', lambda p: optax.adam(p['learning_rate']), adam, 'optax.adam'),
      ('ademamix', lambda p: optax.contrib.ademamix(
          p['learning_rate'], b3=0.999, alpha=5.0), adam,
       'optax.contrib.ademamix, b3=0.999 (timescale 1000), alpha=5'),
      ('multiscale_adam', multiscale_adam(), adam,
       f'scale_by_adam -> multiscale; permanent part + {timescales}'),
      ('fast_weights_adam', fast_weights(), adam,
       f'scale_by_adam -> fast weights: {fast}'),
      ('adam_b1_0', lambda p: optax.adam(p['learning_rate'], b1=0.0), adam,
       'Adam without momentum (b1=0)'),
      ('multiscale_sgd', multiscale_sgd(), multiscale,
       f'multiscale on raw gradients (eq. 1): permanent part + {timescales}'),
      ('fast_weights_sgd', fast_weights(adam=False), multiscale,
       f'fast weights on raw gradients: {fast}'),
      ('benna_fusi_adam', benna_fusi_adam(), adam,
       'scale_by_adam -> multiscale_optax.benna_fusi, '
       'benna_fusi_defaults(6) chain'),
  ]
  if ablations:
    entries += [
        ('ms_adam_slow_half', multiscale_adam(slow_share=0.5), adam,
         'ablation: permanent part gets half the rate'),
        ('ms_adam_tau_3_100', multiscale_adam(longest=100.0), adam,
         'ablation: timescales 3..100'),
        ('ms_adam_tau_30_3000', multiscale_adam(
            shortest=30.0, longest=3000.0), adam,
         'ablation: timescales 30..3000'),
        ('ms_before_adam', multiscale_adam(adam_first=False), adam,
         'ablation: multiscale on gradients, then Adam'),
        ('ms_adam_b1_0', multiscale_adam(b1=0.0), adam,
         'ablation: multiscale_adam on Adam without momentum (b1=0)'),
    ]
  return [harness.Learner(name, name, build, grid=_grid(
      'learning_rate', *limits, num), fixed={'observation': 'gradient'},
                          note=note)
          for name, build, limits, note in entries]


def _bayesian_learner(name: str, build: Build, grid: dict[str, list],
                      note: str, fisher: str = 'exact', rank: int = 0,
                      fixed: dict[str, Any] | None = None,
                      **meta: Any) -> harness.Learner:
  return harness.Learner(
      name, name, build, grid=grid, note=note, meta=meta,
      fixed={'observation': 'categorical', 'fisher': fisher, 'rank': rank,
             **(fixed or {})})


def bayesian_learners(batch: int, num: int,
                      low_rank: bool) -> list[harness.Learner]:
  """The Bayesian learners (module docstring of ``online_digits``), ``num``
  grid points each; the rank-10 ones if ``low_rank``."""
  timescales = (f'{BAYES_TIMESCALES[0]:g}..{BAYES_TIMESCALES[1]:g} steps '
                f'({BAYES_TIMESCALES[2]} log-spaced)')
  drift = _grid('drift_variance', *BAYES_DRIFT_VARIANCES, num)
  learned = {'drift_variance': [BAYES_LEARNED_START]}
  result = [
      _bayesian_learner(
          'vd_ekf', bayesian(batch, timescales=False),
          _grid('process_variance', *VD_EKF_PROCESS_VARIANCES, num),
          'single-timescale diagonal EKF: bayesian_multiscale with one '
          'random-walk subweight (initial variance 2/64), grid: its process '
          'variance per example; categorical observation, one example at a '
          'time'),
      _bayesian_learner(
          'bayesian_multiscale', bayesian(batch), drift,
          'bayesian_multiscale, one prior for all streams: permanent part '
          f'(initial variance 2/64) + timescales {timescales}, equal '
          'variances; grid: total drift variance, ONE value chosen for all '
          'streams on the tuning seeds', shared_choice=True),
      *(_bayesian_learner(
          f'bayesian_multiscale_{fisher}', bayesian(batch), drift,
          f'bayesian_multiscale as above, fisher={fisher!r} observation ('
          + note + '); grid as above', fisher=fisher, shared_choice=True)
        for fisher, note in (
            ('sampled', "BONG's step: one drawn label's gradient per example "
             'sets the information, the observed gradient moves the mean'),
            ('empirical', 'the observed gradient as the one row'))),
      *(_bayesian_learner(
          f'bayesian_multiscale_learned{suffix}',
          bayesian(batch, learn_prior=True), learned,
          ('as bayesian_multiscale_learned, rank 10' if rank else
           'the same prior family, no tuning: total drift variance '
           f'{BAYES_LEARNED_START:g} at the start, its scale learned online '
           '(learn_prior=True)'), rank=rank)
        for rank, suffix in ((0, ''), (10, '_rank10'))
        if low_rank or not rank),
  ]
  return result + [
      _bayesian_learner(
          f'bayesian_multiscale_fit{suffix}', bayesian(batch), {},
          f'the prior of bayesian_multiscale_learned{suffix}, fixed, its '
          'scale chosen per run by fit_prior (log-loss) on the first '
          f'{FIT_WARMUP} steps ({len(FIT_SCALES)} scales '
          f'{FIT_SCALES[0]:g}..{FIT_SCALES[-1]:g})', rank=rank,
          fixed={'drift_variance': BAYES_LEARNED_START, 'prior_scale': 1.0},
          fit_prior=True)
      for rank, suffix in ((0, ''), (10, '_rank10')) if low_rank or not rank]


def learners(config: Any) -> list[harness.Learner]:
  """The registry of ``online_digits`` for ``config`` (its ``batch``,
  ``num_learning_rates``, ``bayesian_num_grid``, ``ablations`` and
  ``bayesian_low_rank``), in the order of the committed rows."""
  gradient = gradient_learners(config.num_learning_rates, config.ablations)
  split = [learner.id for learner in gradient].index('benna_fusi_adam')
  return [*gradient[:split], *bayesian_learners(
      config.batch, config.bayesian_num_grid, config.bayesian_low_rank),
          *gradient[split:]]
