r"""The AR(1) prior: every subweight (or latent component) an AR(1) process.

The generative model behind Bayes-optimal multiscale learning (Jones,
`Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022, §1 and §6) and the Bayesian multiscale learner (Jones et al.,
"Learning in temporally structured environments", ICLR 2023): component
:math:`i` drifts as

.. math::

  z_{i,t+1} = \gamma_i z_{i,t} + \epsilon_{i,t}, \quad
  \epsilon_{i,t} \sim \mathcal N(0, q_i), \qquad
  z_{i,0} \sim \mathcal N(0, s_i).

:class:`AR1Prior` holds :math:`(\gamma, q, s)` once, checked, for
:func:`multiscale_optax.kalman_learning_rates`,
:func:`multiscale_optax.bayesian_multiscale` and
:class:`multiscale_optax.OneOverFEnvironment`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import cast

import jax
import numpy as np
import numpy.typing as npt

from multiscale_optax._src import checks
from multiscale_optax._src import precision


def stationary_variance(decay: Any, process_variance: Any) -> Any:
  r""":math:`q/(1 - \gamma^2)`, written :math:`q/((1 - \gamma)(1 + \gamma))`.

  The product keeps the relative precision of :math:`1 - \gamma` for a
  decay close to 1 (:math:`1 - \gamma^2` loses it to the rounding of
  :math:`\gamma^2`). Concrete values are divided in float64; a concrete
  random walk (:math:`\gamma = 1`) gives ``inf``; traced values give the
  same arithmetic in their own dtype (no Python branch on their values).
  """
  if checks.is_traced(decay) or checks.is_traced(process_variance):
    return process_variance / precision.leak(decay)[1]
  if decay == 1.0:
    return math.inf
  return float(np.float64(process_variance) / precision.leak(decay)[1])


def _flatten(prior: AR1Prior) -> tuple[tuple[Any, ...], None]:
  return (prior.decays, prior.process_variances, prior.initial_variances), None


def _unflatten(_: None, children: Any) -> AR1Prior:
  # No validation: JAX rebuilds pytrees with tracers or placeholders.
  prior = object.__new__(AR1Prior)
  for field, value in zip(
      ('decays', 'process_variances', 'initial_variances'), children,
      strict=True):
    object.__setattr__(prior, field, value)
  return prior


@dataclasses.dataclass(frozen=True)
class AR1Prior:
  r"""An AR(1) prior per component: decays, process and initial variances.

  Let :math:`\gamma_i` be ``decays[i]``, :math:`q_i` be
  ``process_variances[i]`` and :math:`s_i` be ``initial_variances[i]``.
  Component :math:`i` follows

  .. math::

    z_{i,t+1} = \gamma_i z_{i,t} + \epsilon_{i,t}, \quad
    \epsilon_{i,t} \sim \mathcal N(0, q_i), \qquad
    z_{i,0} \sim \mathcal N(0, s_i),

  whose stationary variance (for :math:`|\gamma_i| < 1`) is

  .. math::

    \frac{q_i}{1 - \gamma_i^2}.

  **The default initial variances** (the one rule, for learners and
  environments alike) are the stationary ones: the process has run for
  ever before the first step. A random walk (:math:`\gamma_i = 1`) has no
  stationary variance: it has not run before the first step, so by default
  it starts at its mean (initial variance 0) and its variance grows by
  :math:`q_i` a step from there. Give ``initial_variances`` to start it
  uncertain (a learner's permanent part that should move at once).

  Pass it as ``prior=`` to :func:`multiscale_optax.kalman_learning_rates`,
  :func:`multiscale_optax.steady_state_kalman` and
  :func:`multiscale_optax.bayesian_multiscale`, or to
  :meth:`multiscale_optax.OneOverFEnvironment.from_prior`; those calls give
  the same results as passing the three vectors separately, and check their
  own further conditions (the Kalman filter and the environment need decays
  in :math:`(0, 1]`, distinct). It is a frozen dataclass (hashable where its
  entries are concrete) and a pytree whose leaves are the entries.

  Attributes:
    decays: :math:`\gamma_i \in (-1, 1]`, one per component.
    process_variances: :math:`q_i \ge 0`, one per component.
    initial_variances: :math:`s_i \ge 0`, one per component (the stationary
      variances where not given).

  Each is stored as a tuple of Python floats (or of 0-d tracers, where the
  values are traced; traced values are not range-checked).

  Raises:
    TypeError: an argument is not a 1-D vector of reals.
    ValueError: lengths differ, a vector is empty, or a value is not finite
      or lies outside its range.

  Examples:
    >>> import multiscale_optax as mso
    >>> prior = mso.AR1Prior(decays=[0.5, 0.9], process_variances=[0.75, 0.19])
    >>> print(prior.initial_variances)
    (1.0, 1.0)
    >>> prior = mso.AR1Prior.from_timescales([1.0, 10.0])
    >>> print([round(q, 4) for q in prior.process_variances])
    [0.8647, 0.1813]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1 and §6; Jones,
    Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023.
  """

  decays: tuple[Any, ...]
  process_variances: tuple[Any, ...]
  initial_variances: tuple[Any, ...] | None = None

  def __post_init__(self) -> None:
    decays, process_variances = checks.decays_and_process_variances(
        self.decays, self.process_variances, lowest_decay=-1.0)
    if self.initial_variances is None:
      initial = tuple(
          0.0 if not checks.is_traced(decay) and decay == 1.0
          else stationary_variance(decay, variance)
          for decay, variance in zip(decays, process_variances, strict=True))
    else:
      initial = checks.initial_variances(self.initial_variances, decays)
    object.__setattr__(self, 'decays', decays)
    object.__setattr__(self, 'process_variances', process_variances)
    object.__setattr__(self, 'initial_variances', initial)

  @classmethod
  def from_timescales(
      cls,
      timescales: npt.ArrayLike,
      stationary_variances: float | npt.ArrayLike = 1.0,
  ) -> AR1Prior:
    r"""The prior with timescales :math:`\tau_i`, started stationary.

    .. math::

      \gamma_i = e^{-1/\tau_i}, \qquad
      q_i = v_i\,(1 - \gamma_i)(1 + \gamma_i), \qquad s_i = v_i,

    so that component :math:`i` has stationary variance :math:`v_i`
    (``stationary_variances``) and starts from it. A scalar :math:`v` gives
    every component the same variance: the :math:`1/f` prior, whose
    spectrum is :math:`\approx 1/f` between :math:`1/\tau_{max}` and
    :math:`1/\tau_{min}` for log-spaced timescales
    (:func:`multiscale_optax.log_spaced_timescales`).

    Args:
      timescales: :math:`\tau_i > 0`, finite, in steps.
      stationary_variances: :math:`v_i > 0`, finite: a scalar (the same for
        every component) or one per timescale.

    Returns:
      The :class:`AR1Prior`.

    Raises:
      TypeError, ValueError: for malformed values (the argument is named).

    Examples:
      >>> import multiscale_optax as mso
      >>> prior = mso.AR1Prior.from_timescales(
      ...     mso.log_spaced_timescales(1.0, 100.0, 3), 0.5)
      >>> print([round(v, 6) for v in prior.stationary_variances])
      [0.5, 0.5, 0.5]

    References:
      Jones, `Learning at Multiple Timescales
      <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1–2.
    """
    entries = checks.concrete_vector_entries(timescales, 'timescales')
    checks.check_finite(entries, 'timescales')
    checks.check_range(
        entries, 'timescales', low=0.0, high=np.inf, low_inclusive=False,
        high_inclusive=False)
    if np.ndim(stationary_variances) == 0:
      checks.check_scalar(
          stationary_variances, 'stationary_variances', low=0.0,
          high=np.inf, low_inclusive=False, high_inclusive=False)
      variances = (float(cast(float, stationary_variances)),) * len(entries)
    else:
      variances = checks.concrete_vector_entries(
          stationary_variances, 'stationary_variances')
      checks.check_same_length(
          entries, 'timescales', variances, 'stationary_variances')
      checks.check_finite(variances, 'stationary_variances')
      checks.check_range(
          variances, 'stationary_variances', low=0.0, high=np.inf,
          low_inclusive=False, high_inclusive=False)
    decays = np.exp(-1.0 / np.asarray(entries, np.float64))
    stationary = np.asarray(variances, np.float64)
    return cls(
        decays=tuple(decays.tolist()),
        process_variances=tuple(
            (stationary * ((1.0 - decays) * (1.0 + decays))).tolist()),
        initial_variances=tuple(stationary.tolist()),
    )

  @property
  def stationary_variances(self) -> tuple[Any, ...]:
    r""":math:`q_i/(1 - \gamma_i^2)` per component (``inf`` for a random walk).

    Concrete entries are computed in float64 as
    :math:`q_i/((1 - \gamma_i)(1 + \gamma_i))`, which keeps full precision
    for decays close to 1.
    """
    return tuple(
        map(stationary_variance, self.decays, self.process_variances))

  @property
  def timescales(self) -> tuple[Any, ...]:
    r""":math:`\tau_i = -1/\log\gamma_i` (``inf`` for a random walk).

    Defined for decays in :math:`(0, 1]`; a concrete decay :math:`\le 0`
    has no timescale and raises ``ValueError``.
    """
    result: list[Any] = []
    for index, decay in enumerate(self.decays):
      if checks.is_traced(decay):
        result.append(-1.0 / jax.numpy.log(decay))
      elif decay <= 0.0:
        raise ValueError(
            f'`decays[{index}]` is {decay}: only a decay in (0, 1] has a '
            'timescale.')
      else:
        result.append(
            math.inf if decay == 1.0 else -1.0 / float(np.log(decay)))
    return tuple(result)

  @property
  def num_components(self) -> int:
    """The number of components (subweights)."""
    return len(self.decays)


jax.tree_util.register_pytree_node(AR1Prior, _flatten, _unflatten)


def arguments(
    prior: Any, decays: Any, process_variances: Any, noise_variance: Any,
    *, initial_variances: Any = None,
) -> tuple[AR1Prior, Any]:
  """The prior of a function that takes it loose or as ``prior``.

  The one place where loose AR(1) arguments become an :class:`AR1Prior`:
  every function below the public edge works with the prior.

  Args:
    prior: ``None`` or an :class:`AR1Prior`.
    decays, process_variances, initial_variances: the loose arguments (all
      ``None`` where ``prior`` is given).
    noise_variance: checked to be given (it is not part of the prior).

  Returns:
    ``(prior, noise_variance)``: ``prior``, or the :class:`AR1Prior` of the
    loose arguments (checked as it is built).

  Raises:
    TypeError: ``prior`` is not an :class:`AR1Prior`, both ``prior`` and a
      loose argument are given, neither is, or ``noise_variance`` is
      missing; as :class:`AR1Prior` for malformed loose arguments.
    ValueError: as :class:`AR1Prior`.
  """
  if noise_variance is None:
    raise TypeError('`noise_variance` must be given.')
  if prior is None:
    if decays is None or process_variances is None:
      raise TypeError(
          'Pass `decays` and `process_variances`, or `prior` (an AR1Prior).')
    return AR1Prior(decays, process_variances, initial_variances), (
        noise_variance)
  if not isinstance(prior, AR1Prior):
    raise TypeError(
        f'`prior` must be an AR1Prior, got {type(prior).__name__}.')
  given = [name for name, value in (
      ('decays', decays), ('process_variances', process_variances),
      ('initial_variances', initial_variances)) if value is not None]
  if given:
    raise TypeError(
        f'Pass either `prior` or {", ".join(f"`{n}`" for n in given)}, not '
        'both: the prior holds them.')
  return prior, noise_variance


def check_filterable(prior: AR1Prior, noise_variance: Any) -> None:
  """Refuses a prior without a steady-state Kalman filter.

  The conditions of :func:`multiscale_optax.steady_state_kalman` (and of the
  environments, so that each has one): decays in :math:`(0, 1]` and
  distinct, a random walk with a positive process variance, and a positive
  finite noise variance.

  Args:
    prior: the checked prior.
    noise_variance: the observation noise variance.

  Raises:
    TypeError, ValueError: naming the argument and its allowed range.
  """
  checks.decays_and_process_variances(
      prior.decays, prior.process_variances, lowest_decay=0.0)
  concrete = [d for d in prior.decays if not checks.is_traced(d)]
  if len(set(concrete)) != len(concrete):
    raise ValueError(
        f'`decays` must be distinct (components with equal decays are '
        f'indistinguishable; merge them by adding their process variances), '
        f'got {list(prior.decays)}.')
  for index, (decay, variance) in enumerate(
      zip(prior.decays, prior.process_variances, strict=True)):
    if (not checks.is_traced(decay) and not checks.is_traced(variance)
        and decay == 1.0 and variance == 0.0):
      raise ValueError(
          f'`process_variances[{index}]` must be positive where the decay is '
          '1 (a random walk without innovations is a constant, which has no '
          'steady-state filter).')
  checks.check_scalar(
      noise_variance, 'noise_variance', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
