"""The beliefs of ``mso.bayesian_multiscale`` that the benchmarks compare.

One place for the rows that name a belief, so that every benchmark labels
them alike (``online_1f.py``, ``online_teacher.py``, ``trump_approval.py``).
"""

from __future__ import annotations

from typing import Any

import multiscale_optax as mso

# The diagonal rules reported besides the library's default.
VARIANCE_UPDATES = ('moment_matching', 'mean_field', 'others_as_noise',
                    'weight_marginal')

# The diagonal rule of the Bayesian rows whose ids name no rule
# (``bayesian_multiscale_true_prior`` and the like): the library's default
# when they were first measured (now 'others_as_noise', which has rows of its
# own), kept so that they reproduce; their labels say "moment matching".
MEASURED_DIAGONAL_RULE = 'moment_matching'


def bayes_name(variance_update: str | None = None,
               rank: int | None = None) -> str:
  """The row of the Bayesian learner with the true prior and this belief."""
  if rank:
    return f'Bayesian multiscale (true prior, rank {rank})'
  assert variance_update is not None
  return ('Bayesian multiscale (true prior, diagonal, '
          f"{variance_update.replace('_', ' ')})")


# The recommended start for data whose drift is unknown (docs/choosing.md):
# seven log-spaced timescales from 10 to 10^4 steps with equal stationary
# variances summing to 1 (a 1/f prior on standardised features), whose
# scale and noise are learned online. First written with timescales from 1
# step; on the linear stream where 5 of 20 weights drift
# (per_weight_drift.py) the learned noise then collapsed into the 1-step
# component (an AR(1) with decay 1/e is nearly white noise, so the two
# cannot be told apart), so the range starts at 10 steps.
RECOMMENDED_TIMESCALES = (10.0, 1e4, 7)
RECOMMENDED_OPTIONS: dict[str, Any] = {
    'noise_variance': 1.0, 'learn_prior': True, 'learn_noise_variance': True}


def recommended_prior() -> mso.AR1Prior:
  """The recommended prior (before its scale is learned)."""
  shortest, longest, count = RECOMMENDED_TIMESCALES
  return mso.AR1Prior.from_timescales(
      mso.log_spaced_timescales(shortest, longest, count), 1.0 / count)
