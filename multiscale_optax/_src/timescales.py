r"""Choosing timescales: decays from timescales and log-spaced grids.

A subweight with decay :math:`\gamma` forgets with timescale
:math:`\tau = -1/\log\gamma` (Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §2). Natural environments
have structure at many timescales, so subweights are usually spread
log-uniformly between a shortest and a longest timescale.

The helpers return NumPy float64 arrays: hyperparameters are concrete
construction-time values, and float64 keeps :math:`1 - \gamma` accurate for
timescales of :math:`10^6` steps and more.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from multiscale_optax._src import checks


def decays_from_timescales(timescales: npt.ArrayLike) -> np.ndarray:
  r"""Decays :math:`\gamma_i = \exp(-1/\tau_i)` for timescales :math:`\tau_i`.

  A timescale of ``inf`` gives decay 1 (a permanent, non-decaying subweight).

  Args:
    timescales: :math:`\tau_i > 0`, in steps, one per subweight.

  Returns:
    A float64 NumPy array of decays in :math:`(0, 1]`.

  Raises:
    TypeError: ``timescales`` is not a 1-D sequence of reals.
    ValueError: it is empty, not 1-D, NaN, or has a non-positive entry.

  Examples:
    >>> import multiscale_optax as mso
    >>> mso.decays_from_timescales([1.0, 10.0, float('inf')]).round(4)
    array([0.3679, 0.9048, 1.    ])

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §2.
  """
  entries = checks.concrete_vector_entries(timescales, 'timescales')
  values = np.asarray(entries, dtype=np.float64)
  for position, value in enumerate(values):
    if np.isnan(value) or value <= 0:
      raise ValueError(
          f'`timescales[{position}]` must lie in (0, inf], got {value}.')
  return np.exp(-1.0 / values)


def timescales_from_decays(decays: npt.ArrayLike) -> np.ndarray:
  r"""Timescales :math:`\tau_i = -1/\log\gamma_i` of decays :math:`\gamma_i`.

  Args:
    decays: :math:`\gamma_i \in (0, 1]`, one per subweight (a decay of 1
      has timescale ``inf``).

  Returns:
    A float64 NumPy array of timescales in steps.

  Raises:
    TypeError: ``decays`` is not a 1-D sequence of reals.
    ValueError: it is empty, not 1-D, or an entry lies outside
      :math:`(0, 1]`.

  Examples:
    >>> import multiscale_optax as mso
    >>> mso.timescales_from_decays([0.5, 0.99]).round(3)
    array([ 1.443, 99.499])

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §2.
  """
  entries = checks.concrete_vector_entries(decays, 'decays')
  checks.check_range(
      entries, 'decays', low=0.0, high=1.0, low_inclusive=False,
      high_inclusive=True)
  values = np.asarray(entries, dtype=np.float64)
  # A decay of 1 never forgets: its timescale is +inf, not -1 / log(1).
  with np.errstate(divide='ignore'):
    return np.where(values == 1.0, np.inf, -1.0 / np.log(values))


def log_spaced_timescales(
    shortest: float, longest: float, num: int
) -> np.ndarray:
  r"""A log-spaced grid of timescales from ``shortest`` to ``longest``.

  .. math::

    \tau_i = \tau_{min} \left(\frac{\tau_{max}}{\tau_{min}}\right)^{
      i/(n-1)}, \qquad i = 0, \dots, n-1.

  Log-uniform timescales with equal weight give an approximately :math:`1/f`
  memory, the structure the paper's introduction attributes to natural
  environments.

  Args:
    shortest: :math:`\tau_{min} > 0`, in steps.
    longest: :math:`\tau_{max} \ge \tau_{min}`, finite.
    num: :math:`n \ge 1`, the number of timescales (``num=1`` gives
      ``[shortest]``).

  Returns:
    A float64 NumPy array of ``num`` timescales.

  Raises:
    TypeError: ``num`` is not an integer, or a bound is not a real.
    ValueError: a bound is not positive and finite, ``longest < shortest``,
      or ``num < 1``.

  Examples:
    >>> import multiscale_optax as mso
    >>> mso.log_spaced_timescales(1.0, 1000.0, 4)
    array([   1.,   10.,  100., 1000.])

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §1–2.
  """
  checks.check_scalar(
      shortest, 'shortest', low=0.0, high=np.inf, low_inclusive=False,
      high_inclusive=False)
  checks.check_scalar(
      longest, 'longest', low=float(shortest), high=np.inf,
      high_inclusive=False)
  num = checks.check_integer(num, 'num', low=1)
  if num == 1:
    return np.asarray([float(shortest)])
  return np.geomspace(float(shortest), float(longest), int(num))
