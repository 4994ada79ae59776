r"""The Bayesian multiscale learner: learning rates inferred from a 1/f prior.

Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
structured environments", ICLR 2023, derive the multiscale learner of Jones,
`Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022, as approximate Bayesian inference: each weight is a sum of
subweights, the prior says every subweight is an AR(1) process, and a Gaussian
belief over all subweights of all weights is tracked by an extended Kalman
filter. Its learning rates are not hyperparameters: they are the filter's
gains, inferred per weight and per step.

The generative model. Let :math:`w_0` be the initial params (the prior mean,
fixed) and

.. math::

  w_t = w_0 + \sum_{i=1}^k \omega_{i,t}, \qquad
  \omega_{i,t+1} = \gamma_i\, \omega_{i,t} + \epsilon_{i,t}, \quad
  \epsilon_{i,t} \sim \mathcal N(0, q_i),

independently for every weight, with observations
:math:`y_t = f(w_t, x_t) + v_t`, :math:`v_t \sim \mathcal N(0, R_t)`.
(With zero initial params this is the model :math:`w = \sum_i \omega_i`;
keeping :math:`w_0` as a fixed offset lets a network start from its usual
random initialisation, which breaks the symmetry between hidden units, while
the subweights, which decay to zero, describe the drift around it.)

The belief before an observation is Gaussian over all :math:`kP`
subweights, with means :math:`\mu_i` and covariance
:math:`\mathrm{diag}(D) - UU^\top` (:math:`U` of rank ``rank``; 0 keeps a
diagonal); the params are its mean :math:`w_0 + \sum_i \mu_i`. With
:math:`J = \partial f/\partial w` at the params (the extended Kalman
filter's linearisation) and the residual :math:`e = y - f`, the exact
Gaussian update is computed by the filter's kernel: for one scalar output
and a diagonal belief,

.. math::

  S = R + \sum_{\text{weights}} J^2 \sum_i v_i, \qquad
  \mu_i \leftarrow \mu_i + \frac{v_i J e}{S}, \qquad
  v_i \leftarrow v_i - \frac{(v_i J)^2}{S}

(the last is the exact posterior's marginal variance, "moment matching";
``variance_update`` chooses among four diagonal rules, by default one that
counts the other weights' uncertainty as observation noise). Then the belief is
carried to the next step by the prior: :math:`\mu_i \leftarrow \gamma_i
\mu_i`, :math:`v_i \leftarrow \gamma_i^2 v_i + q_i` (and
:math:`U_i \leftarrow \gamma_i U_i`). :math:`S` is a single reduction over
the whole network: every weight's step depends on the uncertainty of all the
others (updating each weight as if it were alone over-reacts in proportion
to the number of weights, and diverges in the 10-dimensional benchmark of
``benchmarks/online_1f.py``).

In terms of eq. (1) of the NeurIPS paper, subweight :math:`i` decays by
:math:`\gamma_i` and learns from the gradient :math:`u = -J e / r` of the
negative log-likelihood :math:`(y - f)^2/(2r)` at rate
:math:`\alpha_i = \gamma_i v_i r / S` (per weight, per step). With one weight
and one subweight this is the scalar Kalman filter exactly; with rank
:math:`L \ge kP` it is the joint Kalman filter of all subweights.

Storage. The means :math:`\mu_i` are stored as a double-float32 scale
times an array (the docs page *Numerics*) wherever their
dtype is narrower than float64, so they decay at the full rate
:math:`\gamma_i` in any storage dtype; :math:`D` and :math:`U` describe
how much has been learned and are stored in at least float32 (a narrower
variance stops relaxing towards the prior once its per-step change falls
below half a unit in its last place).

Memory: :math:`k(L + 2)` params-shaped arrays (:math:`\mu_i`, :math:`D_i`
and the :math:`L` rows of :math:`U_i`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from multiscale_optax._src import ar1_prior
from multiscale_optax._src import checks
from multiscale_optax._src import gaussian_belief
from multiscale_optax._src import precision
from multiscale_optax._src import prior_learning
from multiscale_optax._src import scaled_storage
from multiscale_optax._src import small_linalg
from multiscale_optax._src import subweight_state
from multiscale_optax._src import treedefs


class BayesianMultiscaleState(NamedTuple):
  r"""State of :func:`bayesian_multiscale`.

  Attributes:
    count: number of updates applied so far (``int32``).
    means: :math:`\mu_i`, one params-shaped pytree per subweight: the
      predictive means of the subweights for the next example (offsets from
      the initial params, which are the fixed prior mean). Where a leaf is
      narrower than float64 it holds :math:`\mu_i / s_i`
      (``mean_scales``).
    variances: :math:`D_i`, one params-shaped pytree per subweight: the
      diagonal part of the predictive covariance (the predictive variances
      themselves for a diagonal belief), in at least float32.
    factors: :math:`U_i`, one pytree per subweight whose leaves have shape
      ``(*param.shape, rank)``: the low-rank part of the covariance
      :math:`\mathrm{diag}(D) - UU^\top`; empty for ``rank=0``.
    mean_scales: per subweight, its scale :math:`s_i` as a float32 pair
      ``(high, low)`` (the docs page *Numerics*).
    log_process_scale: :math:`\log c`: the process variances in use are
      :math:`c\, q_i`. A scalar, or params-shaped (one :math:`c` per
      weight) with ``learn_prior='per_weight'``; zero unless the prior is
      learned.
    log_noise_scale: :math:`\log \rho`, a scalar: the model's noise is
      :math:`\rho R`, its process variances :math:`\rho c q_i`. The means
      depend on the ratio only, so the filter runs with :math:`R` and
      :math:`c q_i` and the stored variances are in units of :math:`\rho`
      (:func:`get_bayesian_subweights` multiplies them back). Zero unless
      ``learn_noise_variance=True``, where :math:`\rho` is profiled
      (:class:`PriorLearningState`).
    innovation_variance: the last step's innovation variance :math:`\rho S`
      (for :math:`C` outputs, :math:`\rho\,\mathrm{tr}(S)/C`); ``nan``
      before the first update.
    skipped_observations: how many observations were not finite (a
      non-finite Jacobian, residual, gradient or observation covariance,
      or one whose innovation covariance was not positive definite) and so
      were skipped: for those steps only the prior's prediction was
      applied (``int32``).
    prior_tangents: :math:`T_i = \partial\mu_i/\partial\log c`, one
      params-shaped pytree per subweight, in the variances' dtype (empty
      unless the prior is learned).
    prior_learning: the window statistics and step moments of the learned
      scales (a :class:`PriorLearningState`).
    decays: :math:`\gamma_i`, one scalar per subweight: the decays of the
      last update (or of the learner at init), so that
      :func:`get_bayesian_subweights` reads everything from the state
      (under ``optax.inject_hyperparams`` the decays may change).
  """

  # The field shadows tuple.count, as in optax's own states (its name is
  # what inject_hyperparams and users look for).
  count: jax.Array  # type: ignore[assignment]
  means: tuple[optax.Params, ...]
  variances: tuple[optax.Params, ...]
  factors: tuple[optax.Params, ...]
  mean_scales: tuple[tuple[jax.Array, jax.Array], ...]
  log_process_scale: jax.Array
  log_noise_scale: jax.Array
  innovation_variance: jax.Array
  skipped_observations: jax.Array
  prior_tangents: tuple[optax.Params, ...]
  prior_learning: prior_learning.PriorLearningState
  decays: tuple[jax.Array, ...]


class BayesianSubweights(NamedTuple):
  r"""The belief of a Bayesian multiscale learner, as returned by
  :func:`get_bayesian_subweights`.

  Attributes:
    decays: :math:`\gamma_i`, one scalar per subweight.
    prior_mean: :math:`w_0`, the params minus :math:`\sum_i \mu_i`.
    means: :math:`\mu_i`, one params-shaped pytree per subweight.
    variances: the marginal variances of the subweights,
      :math:`\rho(D_i - \sum_l U_{i,l}^2)`, one params-shaped pytree per
      subweight (:math:`\rho` the noise scale, 1 unless learned).
    learning_rates: :math:`\gamma_i v_i / S` with :math:`v_i` the marginal variances and
      :math:`S` the last step's innovation variance, one params-shaped
      pytree per subweight: the gain of each subweight on the residual
      :math:`J e` at the next step if its innovation variance equals the
      last one and the belief is diagonal (for scalar outputs; multiply by
      :math:`r` for the rate on the gradient).
    process_scale: :math:`c`, the learned scale of the process variances
      relative to the noise: a scalar, or params-shaped for
      ``learn_prior='per_weight'``.
    noise_scale: :math:`\rho`, the learned (profiled) scale of the noise
      variance; the model's process variances are :math:`\rho c q_i`.
  """

  decays: tuple[jax.Array, ...]
  prior_mean: optax.Params
  means: tuple[optax.Params, ...]
  variances: tuple[optax.Params, ...]
  learning_rates: tuple[optax.Params, ...]
  process_scale: jax.Array
  noise_scale: jax.Array


def _aligned_leaves(reference: Any, tree: Any) -> list[Any]:
  """The leaves of ``tree`` at the leaves of ``reference``.

  ``tree`` may hold arrays where ``reference`` holds ``optax.MaskedNode``
  (``optax.masked`` masks the updates but, by default, not the extra
  arguments); those are dropped.
  """
  kept = jax.tree.map(
      lambda node, leaf: (None if subweight_state.is_masked(node)
                          else _Kept(leaf)),
      reference, tree, is_leaf=subweight_state.is_masked)
  return [node.leaf for node in jax.tree.leaves(
      kept, is_leaf=lambda node: isinstance(node, _Kept))]


class _Kept:
  """Wraps a kept leaf for :func:`_aligned_leaves` (not a pytree node, so
  a tuple in the params' own structure is not mistaken for it)."""

  def __init__(self, leaf: Any):
    self.leaf = leaf


def _variance_dtype(
    param_dtype: DTypeLike, state_dtype: DTypeLike | None) -> np.dtype[Any]:
  """The dtype of a leaf's variances and factors: at least float32."""
  return precision.compute_dtype(
      param_dtype if state_dtype is None else state_dtype)


def _check_decay_dtype(decays: Any) -> None:
  """Refuses decays that arrive narrower than float32."""
  values = decays if isinstance(decays, Sequence) else [decays]
  for value in values:
    dtype = getattr(value, 'dtype', None)
    if (dtype is not None and jnp.issubdtype(dtype, jnp.floating)
        and precision.is_narrower_than_float32(dtype)):
      raise TypeError(
          f'`decays` arrived as {jnp.dtype(dtype).name}, which rounds a '
          'decay such as 0.999 to 1. optax.inject_hyperparams casts '
          "hyperparameters to the params' dtype: pass "
          "hyperparam_dtype=jnp.float32, or decays as a list or in "
          "static_args=('decays',).")


def _check_noise_variance(noise_variance: Any) -> None:
  checks.check_scalar(
      noise_variance, 'noise_variance', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)


def _check_observation_covariance(value: Any, outputs: int | None) -> None:
  """Shape always; symmetry and positive definiteness where concrete."""
  shape = tuple(jnp.shape(value))
  expected = () if outputs is None else (outputs, outputs)
  if shape != expected:
    raise ValueError(
        f'`observation_covariance` must have shape {expected} ('
        + ('a scalar, for a scalar `residual` or none' if outputs is None
           else 'N x N for a `residual` of shape (N,)')
        + f'), got {shape}.')
  if jnp.iscomplexobj(value):
    raise TypeError('`observation_covariance` must be real.')
  if checks.is_traced(value):
    return
  matrix = np.asarray(value, dtype=np.float64).reshape(expected or (1, 1))
  if not np.all(np.isfinite(matrix)):
    raise ValueError('`observation_covariance` must be finite.')
  if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=0.0):
    raise ValueError('`observation_covariance` must be symmetric.')
  if matrix.size and np.linalg.eigvalsh(matrix)[0] <= 0.0:
    raise ValueError(
        '`observation_covariance` must be positive definite (every '
        f'eigenvalue > 0), got smallest eigenvalue '
        f'{np.linalg.eigvalsh(matrix)[0]:.3g}.')


def _check_state_leaves(
    hyper: _Hyperparameters, state: BayesianMultiscaleState,
    grad_leaves: list[jax.Array], treedef: treedefs.TreeDef,
) -> tuple[list[list[jax.Array]], list[list[jax.Array]],
           list[list[jax.Array]], list[list[jax.Array]]]:
  """The state's leaves, checked against this learner and the updates."""
  num, rank = len(hyper.decays), hyper.rank
  if len(state.means) != num:
    raise ValueError(
        f'The state holds {len(state.means)} subweights, but this '
        f'transformation has {num}: initialise the state with this '
        'transformation.')
  state_rank = (jax.tree.leaves(state.factors[0])[0].shape[-1]
                if state.factors and jax.tree.leaves(state.factors[0])
                else None)
  if bool(state.factors) != bool(rank) or (
      state_rank is not None and state_rank != rank):
    built = (f'rank {state_rank}' if state.factors
             else 'a diagonal belief (rank 0)')
    raise ValueError(
        f'The state was built for {built}, but this transformation has rank '
        f'{rank}: initialise the state with this transformation (the rank '
        "sets the state's shapes).")
  learns = hyper.learn_prior is not None
  if bool(state.prior_tangents) != learns:
    raise ValueError(
        'The state was built ' + ('without' if learns else 'with')
        + ' a learned prior, but this transformation has learn_prior='
        f'{hyper.learn_prior or False!r}: initialise the state with this '
        'transformation.')
  per_weight = hyper.learn_prior == prior_learning.PER_WEIGHT
  scale = state.log_process_scale
  if per_weight:
    fits = jax.tree.structure(scale) == treedef and all(
        tuple(leaf.shape) == tuple(grad.shape) for leaf, grad in zip(
            treedef.flatten_up_to(scale), grad_leaves))
  else:
    fits = isinstance(scale, jax.Array | np.ndarray) and scale.ndim == 0
  if not fits:
    raise ValueError(
        "The state's `log_process_scale` is not "
        + ('params-shaped' if per_weight else 'a scalar')
        + f", as learn_prior={hyper.learn_prior!r} needs: initialise the "
        'state with this transformation.')
  means, variances, factors, tangents = (
      subweight_state.leaves_of(treedef, trees)
      for trees in (state.means, state.variances, state.factors,
                    state.prior_tangents))
  for position, grad in enumerate(grad_leaves):
    shape = tuple(grad.shape)
    for index in range(num):
      for name, leaves, expected in (
          ('means', means, shape), ('variances', variances, shape),
          ('factors', factors, (*shape, rank)),
          ('prior_tangents', tangents, shape)):
        if leaves and tuple(leaves[index][position].shape) != expected:
          raise ValueError(
              f'`state.{name}[{index}]` leaf {position} has shape '
              f'{tuple(leaves[index][position].shape)}, expected '
              f'{expected}: the state does not belong to these params.')
  return means, variances, factors, tangents


def _observation(
    grad_leaves: list[jax.Array],
    jacobian_leaves: list[Any],
    residual: Any,
    observation_covariance: Any,
    noise: jax.Array,
    dtype: Any,
) -> tuple[Callable[[jax.Array], gaussian_belief.Observation], list[jax.Array],
           jax.Array]:
  """The observation in the kernel's form, for any rescaling of it.

  Returns a function of the power of two :math:`m \\ge 1` by which the
  Jacobian is divided (the residual by :math:`m`, :math:`R` and
  :math:`J^\\top e` by :math:`m^2`: the Kalman update is invariant to this,
  and a Jacobian entry of 3e19 no longer overflows when squared in
  float32), the Jacobian rows as given, and whether the gradient or
  residual and :math:`R` are finite. Nothing here reads every entry of the
  Jacobian: :func:`_innovation` picks :math:`m` only where the innovation
  overflowed.
  """
  rows = []
  for grad, jac in zip(grad_leaves, jacobian_leaves):
    jac = jnp.asarray(jac)
    if jnp.iscomplexobj(jac):
      raise TypeError('`jacobian` must be real: bayesian_multiscale '
                      'tracks a belief over real weights.')
    rows.append(jac.astype(dtype).reshape(-1, *grad.shape))
  outputs = rows[0].shape[0] if rows else 1
  if observation_covariance is None:
    covariance = noise * jnp.eye(outputs, dtype=dtype)
  else:
    covariance = jnp.asarray(observation_covariance, dtype).reshape(
        outputs, outputs)
  if residual is None:
    # One read of the gradient (the products themselves are formed inside
    # the loops that use them).
    finite = jnp.isfinite(_max_abs(grad_leaves))
    error = None
  else:
    error = jnp.asarray(residual, dtype).reshape(outputs)
    finite = jnp.all(jnp.isfinite(error))
  finite = finite & jnp.all(jnp.isfinite(covariance))

  def rescaled(rescale: jax.Array) -> gaussian_belief.Observation:
    # A power of two: multiplying by its reciprocal divides exactly, and
    # costs no division per entry.
    inverse = 1.0 / rescale
    inverse_square = jnp.square(inverse)
    return gaussian_belief.Observation(
        rows=[row * inverse for row in rows],
        covariance=covariance * inverse_square,
        residual=None if error is None else error * inverse,
        residual_products=None if error is not None else [
            grad.astype(dtype) * (-noise * inverse_square)
            for grad in grad_leaves])
  return rescaled, rows, finite


def _innovation(
    belief: gaussian_belief.Belief,
    observation_at: Callable[[jax.Array], gaussian_belief.Observation],
    rows: list[jax.Array],
    dtype: Any,
) -> tuple[gaussian_belief.Observation, gaussian_belief.Innovation,
           jax.Array]:
  """The innovation, rescaled by a power of two only where it overflowed.

  The innovation of the observation as given is one reduction over the
  Jacobian and the variances. Where its Cholesky factor is not finite (an
  entry of :math:`J` near the square root of the largest float, or a
  non-finite input), the Jacobian is divided by the power of two
  :math:`m` at its largest magnitude and the innovation recomputed, in a
  ``lax.cond`` that costs nothing when not taken. A power of two scales
  exactly, so the two agree wherever both are finite.

  Returns:
    The observation divided by :math:`m`, its innovation, and :math:`m`.
  """
  one = jnp.ones((), dtype)
  innovation = gaussian_belief.innovation(belief, observation_at(one))

  def rescale(operand: None) -> tuple[jax.Array, gaussian_belief.Innovation]:
    del operand
    largest = _max_abs(rows)
    _, exponent = jnp.frexp(largest)
    factor = jnp.where(jnp.isfinite(largest) & (largest > 1.0),
                       jnp.ldexp(one, exponent), one)
    return factor, gaussian_belief.innovation(belief, observation_at(factor))

  factor, innovation = jax.lax.cond(
      jnp.all(jnp.isfinite(innovation.cholesky)),
      lambda _: (one, innovation), rescale, None)
  return observation_at(factor), innovation, factor


def _max_abs(leaves: Sequence[jax.Array]) -> jax.Array:
  """The largest magnitude over ``leaves`` (NaN if any entry is NaN)."""
  largest = jnp.max(jnp.abs(leaves[0]), initial=0.0)
  for leaf in leaves[1:]:
    largest = jnp.maximum(largest, jnp.max(jnp.abs(leaf), initial=0.0))
  return largest


class _Hyperparameters(NamedTuple):
  """The settings of a :func:`bayesian_multiscale` learner."""

  decays: tuple[Any, ...]
  leaks: tuple[tuple[Any, Any], ...]  # (1 - gamma, 1 - gamma^2)
  process_variances: tuple[Any, ...]
  noise_variance: Any
  rank: int
  variance_update: str
  # None, prior_learning.GLOBAL or prior_learning.PER_WEIGHT.
  learn_prior: str | None
  learn_noise_variance: bool
  prior_learning_rate: optax.ScalarOrSchedule
  prior_window: Any
  outlier_threshold: Any


def _output_count(
    grad_leaves: list[jax.Array], jacobian_leaves: list[Any],
    trainable: list[int], residual: Any, observation_covariance: Any,
) -> int | None:
  """``None`` for a scalar observation, else N; checks every shape."""
  residual_shape = () if residual is None else tuple(jnp.shape(residual))
  if len(residual_shape) > 1:
    raise ValueError(
        '`residual` must be a scalar (one output) or of shape (N,) '
        f'(N outputs, flattened), got shape {residual_shape}.')
  outputs = residual_shape[0] if residual_shape else None
  for position in trainable:
    grad, jac = grad_leaves[position], jacobian_leaves[position]
    expected = grad.shape if outputs is None else (outputs, *grad.shape)
    if tuple(jnp.shape(jac)) != tuple(expected):
      raise ValueError(
          f'`jacobian` leaf {position} has shape {tuple(jnp.shape(jac))}, '
          f'expected {tuple(expected)} (the param\'s shape'
          + (', after the N outputs of `residual`)' if outputs is not None
             else '; pass `residual` of shape (N,) for N outputs)'))
  if observation_covariance is not None:
    _check_observation_covariance(observation_covariance, outputs)
  return outputs


class _Conditioned(NamedTuple):
  """An observation's effect on the belief (see :func:`_observe`)."""

  belief: gaussian_belief.Belief
  observation: gaussian_belief.Observation
  innovation: gaussian_belief.Innovation
  posterior: gaussian_belief.Posterior
  valid: jax.Array
  rescale: jax.Array
  rows: list[jax.Array]  # the Jacobian rows as given (before ``rescale``)


def _observe(
    hyper: _Hyperparameters,
    grad_leaves: list[jax.Array],
    jacobian_leaves: list[Any],
    variances: list[list[jax.Array]],
    factors: list[list[jax.Array]],
    trainable: list[int],
    residual: Any,
    observation_covariance: Any,
    dtype: Any,
) -> _Conditioned:
  """Conditions the belief on the observation (of at least one output)."""
  observation_at, rows, valid = _observation(
      [grad_leaves[p] for p in trainable],
      [jacobian_leaves[p] for p in trainable], residual,
      observation_covariance, jnp.asarray(hyper.noise_variance, dtype),
      dtype)
  summed = _summed_subweights(_increment_forms(hyper.decays))
  belief = gaussian_belief.Belief(
      diagonals=[[leaves[p].astype(dtype) for p in trainable]
                 for leaves in variances],
      factors=[[leaves[p].astype(dtype) for p in trainable]
               for leaves in factors],
      summed_first=summed)
  observation, innovation, rescale = _innovation(
      belief, observation_at, rows, dtype)
  valid = valid & jnp.all(jnp.isfinite(innovation.cholesky))
  if hyper.outlier_threshold is not None:
    observation = gaussian_belief.clip_residual(
        observation, innovation, hyper.outlier_threshold)
  if observation_covariance is not None:
    valid = valid & jnp.all(jnp.isfinite(
        small_linalg.cholesky(observation.covariance)))
  posterior = gaussian_belief.condition(
      belief, observation, innovation, hyper.variance_update, summed)
  return _Conditioned(belief, observation, innovation, posterior, valid,
                      rescale, rows)


class _LearnedPrior(NamedTuple):
  """The prior's scales after an observation (see :func:`_learn_prior`)."""

  log_process_scales: Any  # a scalar, or per trainable leaf
  log_noise_scale: jax.Array
  learning: prior_learning.PriorLearningState
  tangent_steps: list[list[jax.Array]] | None


def _learn_prior(
    hyper: _Hyperparameters,
    state: BayesianMultiscaleState,
    conditioned: _Conditioned,
    tangents: list[list[jax.Array]],
    log_process_scales: Any,
    learning: prior_learning.PriorLearningState,
    dtype: Any,
) -> _LearnedPrior:
  """One step of the learned prior scales and the means' sensitivities.

  The terms are those of :mod:`multiscale_optax._src.prior_learning`;
  ``log_process_scales``, ``learning.sensitivities`` and the moments are
  scalars for the global scale and lists over the trainable leaves per
  weight, as are the returned ones.
  """
  observation, innovation = conditioned.observation, conditioned.innovation
  belief, valid = conditioned.belief, conditioned.valid
  assert observation.residual is not None
  cholesky = innovation.cholesky
  solved = small_linalg.cho_solve(cholesky, observation.residual)
  squared_residual = observation.residual @ solved
  summed_tangents = [
      sum(leaves[1:], leaves[0]).astype(dtype) for leaves in zip(*tangents)]
  if hyper.learn_prior == prior_learning.GLOBAL:
    # H is J / m (m = conditioned.rescale): the division applied to the
    # N-vector J T, not to every entry of J.
    tracking = gaussian_belief.tangent_projection(
        conditioned.rows, summed_tangents) / conditioned.rescale
    terms = prior_learning.Terms(
        explained=solved @ innovation.explained @ solved,
        trace=jnp.trace(small_linalg.cho_solve(cholesky, innovation.explained)),
        tracking=solved @ tracking)
    # dmu/dlog c steps by Sigma H^T S^-1 (R a - H T) (module docstring of
    # prior_learning): a mean step with another right-hand side.
    steps, _ = gaussian_belief.covariance_times(
        belief, observation, innovation, small_linalg.cho_solve(
            cholesky, observation.covariance @ solved - tracking))
  else:
    gains, precisions, own = gaussian_belief.weight_statistics(
        belief, observation, innovation, solved)
    terms = prior_learning.Terms(
        explained=[m * jnp.square(g) for m, g in zip(own, gains)],
        trace=[m * b for m, b in zip(own, precisions)],
        tracking=[g * t for g, t in zip(gains, summed_tangents)])
    steps = [[step * (1.0 - m * b) - diagonal * b * t
              for step, diagonal, m, b, t in zip(
                  mean_steps, diagonals, own, precisions, summed_tangents)]
             for mean_steps, diagonals in zip(
                 conditioned.posterior.mean_steps, belief.diagonals)]
  forget = 1.0 - 1.0 / jnp.asarray(hyper.prior_window, dtype)
  increments, learning = prior_learning.gradients(
      learning, terms, squared_residual.astype(dtype),
      observation.residual.shape[0], forget, hyper.learn_noise_variance,
      valid)
  rate = (hyper.prior_learning_rate(state.count)
          if callable(hyper.prior_learning_rate)
          else hyper.prior_learning_rate)
  log_process_scales, learning = prior_learning.normalised_steps(
      log_process_scales, increments, learning, jnp.asarray(rate, dtype),
      valid)
  log_noise_scale = state.log_noise_scale
  if hyper.learn_noise_variance:
    log_noise_scale = jnp.log(prior_learning.noise_scale(learning)).astype(
        log_noise_scale.dtype)
  steps = [[jnp.where(valid, step, 0.0) for step in leaves]
           for leaves in steps]
  return _LearnedPrior(log_process_scales, log_noise_scale, learning, steps)


def _is_pseudo_residual(pseudo_residual: Any) -> bool:
  """Whether the ``pseudo_residual`` extra argument marks a pseudo-residual.

  ``categorical_observation`` with ``fisher='sampled'`` or
  ``'empirical'`` passes a :class:`gaussian_belief.PseudoResidual` (a
  pytree with no leaves, which ``jax.jit`` keeps as structure); a user may
  pass a Python bool. A traced value cannot be read at trace time.
  """
  if isinstance(pseudo_residual, gaussian_belief.PseudoResidual):
    return True
  if isinstance(pseudo_residual, bool | np.bool_):
    return bool(pseudo_residual)
  raise TypeError(
      '`pseudo_residual` must be a Python bool or the marker that '
      'categorical_observation passes, got '
      f'{type(pseudo_residual).__name__}: a bool passed through jax.jit '
      'arrives traced; pass the extra arguments of categorical_observation '
      'unchanged, or set pseudo_residual outside the jitted function.')


def _check_pseudo_residual(
    pseudo_residual: Any, hyper: _Hyperparameters) -> None:
  """Refuses the options that read the residual as data, where it is not.

  ``categorical_observation`` with ``fisher='sampled'`` or
  ``'empirical'`` marks its residual as a pseudo-residual: a device that
  makes the mean move along the observed gradient, not a prediction error,
  so a prior scale, a noise scale or an outlier bound learned from it would
  be wrong.
  """
  if not _is_pseudo_residual(pseudo_residual):
    return
  for flag, name in ((hyper.learn_prior is not None, 'learn_prior'),
                     (hyper.learn_noise_variance,
                      'learn_noise_variance=True'),
                     (hyper.outlier_threshold is not None,
                      '`outlier_threshold`')):
    if flag:
      raise ValueError(
          f'{name} reads the residual as a prediction error, but this '
          'observation\'s residual is a pseudo-residual '
          "(categorical_observation with fisher='sampled' or "
          "'empirical'); use fisher='exact', or leave the prior fixed.")


def _trainable_leaves(
    treedef: treedefs.TreeDef, tree: Any, trainable: list[int]) -> list[Any]:
  """The leaves of a params-shaped ``tree`` at the trainable positions."""
  leaves = treedef.flatten_up_to(tree)
  return [leaves[p] for p in trainable]


def _with_trainable_leaves(
    treedef: treedefs.TreeDef, tree: Any, trainable: list[int],
    new_leaves: list[Any]) -> Any:
  """``tree`` with its trainable leaves replaced by ``new_leaves``."""
  leaves = treedef.flatten_up_to(tree)
  for position, leaf in zip(trainable, new_leaves):
    leaves[position] = leaf.astype(leaves[position].dtype)
  return treedef.unflatten(leaves)


class _Score(NamedTuple):
  r"""What an update saw of its observation, for :func:`fit_prior`.

  Attributes:
    squared_residual: :math:`z = e^\top S^{-1} e` (0 where nothing was
      observed or the residual is unknown).
    log_determinant: :math:`\log\det S`.
    outputs: :math:`N` where the observation was valid, else 0.
  """

  squared_residual: jax.Array
  log_determinant: jax.Array
  outputs: jax.Array


def _update(
    hyper: _Hyperparameters,
    updates: optax.Updates,
    state: BayesianMultiscaleState,
    jacobian: Any,
    residual: Any,
    observation_covariance: Any,
) -> tuple[optax.Updates, BayesianMultiscaleState, _Score]:
  """One observation and one prediction (see :func:`bayesian_multiscale`).

  Also returns the observation's :class:`_Score`.
  """
  if jacobian is None:
    raise ValueError(
        'bayesian_multiscale needs the extra argument `jacobian` '
        '(d prediction / d params), e.g. opt.update(grads, state, params, '
        'jacobian=J); see mso.gaussian_observation.')
  treedef: treedefs.TreeDef
  grad_leaves, treedef = jax.tree.flatten(updates)
  grad_leaves = [jnp.asarray(leaf) for leaf in grad_leaves]
  try:
    jacobian_leaves = _aligned_leaves(updates, jacobian)
  except (ValueError, TypeError) as error:
    raise ValueError(
        '`jacobian` must have the structure of the params (one leaf per '
        f'param): {error}') from error
  means, variances, factors, tangents = _check_state_leaves(
      hyper, state, grad_leaves, treedef)
  trainable = [
      position for position, grad in enumerate(grad_leaves)
      if subweight_state.is_trainable(grad.dtype, means[0][position].dtype)
      and grad.size]
  for position in trainable:
    if jnp.iscomplexobj(grad_leaves[position]):
      raise TypeError(
          'bayesian_multiscale tracks a belief over real weights; got a '
          f'complex gradient leaf {position}.')
  outputs = _output_count(grad_leaves, jacobian_leaves, trainable, residual,
                          observation_covariance)
  for flag, name in ((hyper.learn_prior is not None, 'learn_prior'), (
      hyper.outlier_threshold is not None, '`outlier_threshold`')):
    if flag and residual is None:
      raise ValueError(
          f'{name} needs the extra argument `residual` (y - prediction).')
  per_weight = hyper.learn_prior == prior_learning.PER_WEIGHT
  learning = state.prior_learning
  log_scales: Any = state.log_process_scale
  if per_weight:
    log_scales = _trainable_leaves(treedef, log_scales, trainable)
    learning = prior_learning.map_scale_fields(
        lambda tree: _trainable_leaves(treedef, tree, trainable), learning)
  dtype = precision.compute_dtype(
      *(grad_leaves[p].dtype for p in trainable),
      *(leaves[p].dtype for leaves in means + variances for p in trainable),
      state.log_noise_scale.dtype)
  conditioned = None
  learned = _LearnedPrior(log_scales, state.log_noise_scale, learning, None)
  innovation_variance = state.innovation_variance
  zero = jnp.zeros([], dtype)
  score = _Score(zero, zero, jnp.zeros([], jnp.int32))
  if trainable and outputs != 0:
    conditioned = _observe(
        hyper, grad_leaves, jacobian_leaves, variances, factors, trainable,
        residual, observation_covariance, dtype)
    if hyper.learn_prior is not None:
      learned = _learn_prior(
          hyper, state, conditioned,
          [[leaves[p] for p in trainable] for leaves in tangents],
          log_scales, learning, dtype)
    innovation = conditioned.innovation.covariance
    innovation_variance = jnp.where(
        conditioned.valid,
        (jnp.exp(learned.log_noise_scale.astype(dtype))
         * jnp.trace(innovation) * jnp.square(conditioned.rescale)
         / innovation.shape[0]).astype(innovation_variance.dtype),
        innovation_variance)
    score = _score(conditioned)
  if per_weight:
    scale_changes = [
        (jnp.exp(new.astype(dtype)), jnp.exp((new - old).astype(dtype)))
        for new, old in zip(learned.log_process_scales, log_scales)]
  else:
    scale_changes = [(
        jnp.exp(learned.log_process_scales.astype(dtype)),
        jnp.exp((learned.log_process_scales - log_scales).astype(dtype)),
    )] * len(trainable)
  stored = _predict_and_store(
      hyper, state, grad_leaves, means, variances, factors, tangents,
      trainable, conditioned, learned.tangent_steps, scale_changes, dtype)
  skipped = (jnp.asarray(False) if conditioned is None
             else ~conditioned.valid)
  learning = learned.learning
  log_process_scale = learned.log_process_scales
  if per_weight:
    log_process_scale = _with_trainable_leaves(
        treedef, state.log_process_scale, trainable, log_process_scale)
    learning = prior_learning.map_scale_fields(
        lambda leaves, tree: _with_trainable_leaves(
            treedef, tree, trainable, leaves), learning, state.prior_learning)
  new_state = BayesianMultiscaleState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      means=subweight_state.trees_of(treedef, stored.means),
      variances=subweight_state.trees_of(treedef, stored.variances),
      factors=subweight_state.trees_of(treedef, stored.factors),
      mean_scales=stored.mean_scales,
      log_process_scale=log_process_scale,
      log_noise_scale=learned.log_noise_scale,
      innovation_variance=innovation_variance,
      skipped_observations=state.skipped_observations
      + skipped.astype(jnp.int32),
      prior_tangents=subweight_state.trees_of(treedef, stored.tangents),
      prior_learning=learning,
      decays=tuple(jnp.asarray(decay, old.dtype)
                   for decay, old in zip(hyper.decays, state.decays,
                                         strict=True)),
  )
  return treedef.unflatten(stored.increments), new_state, score


def _score(conditioned: _Conditioned) -> _Score:
  r"""The :class:`_Score` of a conditioned observation, in its own units.

  The observation was divided by the power of two :math:`m`, so :math:`S`
  by :math:`m^2`: :math:`\log\det S` gains :math:`2N\log m` back, and
  :math:`z` is unchanged.
  """
  observation, innovation = conditioned.observation, conditioned.innovation
  cholesky = innovation.cholesky
  count = cholesky.shape[0]
  valid = conditioned.valid
  squared = (0.0 if observation.residual is None else
             observation.residual @ small_linalg.cho_solve(
                 cholesky, observation.residual))
  log_determinant = 2.0 * (
      jnp.sum(jnp.log(jnp.diagonal(cholesky)))
      + count * jnp.log(conditioned.rescale))
  return _Score(
      squared_residual=jnp.where(valid, squared, 0.0),
      log_determinant=jnp.where(valid, log_determinant, 0.0),
      outputs=jnp.where(valid, count, 0).astype(jnp.int32))


# Below this magnitude a decay's increment is not read from its new mean: a
# new mean of gamma (mu + dmu) near the smallest normal number would lose
# digits that the division by gamma would then magnify.
_SMALLEST_DECAY_READ_AFTER_UPDATE = 2.0 ** -20
AFTER, ZERO, BEFORE = 'after', 'zero', 'before'


def _increment_forms(decays: Sequence[Any]) -> tuple[str, ...]:
  r"""Per subweight, where its share of the params' increment is read.

  ``AFTER``: a concrete decay with :math:`|\gamma| \ge 2^{-20}` (of either
  sign), from the new mean (:func:`_mean_step`). ``ZERO``: a concrete decay
  of 0, whose mean is 0 after every update (init stores 0, and
  :math:`0 \cdot (\mu + \Delta\mu) = 0`), so its share is 0 and its new
  mean is written without reading the old one. ``BEFORE``: a traced (or
  tiny) decay, from the old mean.
  """
  forms = []
  for decay in decays:
    if checks.is_traced(decay):
      forms.append(BEFORE)
    elif decay == 0.0:
      forms.append(ZERO)
    elif abs(decay) >= _SMALLEST_DECAY_READ_AFTER_UPDATE:
      forms.append(AFTER)
    else:
      forms.append(BEFORE)
  return tuple(forms)


def _summed_subweights(forms: Sequence[str]) -> list[int] | None:
  """The subweights whose mean steps the params' increment sums (``None``
  for all): without the zero-decay ones where every other reads after."""
  after = [index for index, form in enumerate(forms) if form == AFTER]
  if len(after) == len(forms) or not after or BEFORE in forms:
    return None
  return after


def _mean_step(
    stored: jax.Array, step: jax.Array, decay: jax.Array, leak: jax.Array,
    scale_step: scaled_storage.ScaleStep, dtype: Any,
    form: str | None,
) -> tuple[jax.Array, jax.Array]:
  r"""One mean's :math:`\mu' = \gamma(\mu + \Delta\mu)`: stored, increment.

  ``form`` is ``None`` where the leaf's increment reads the old means, else
  the subweight's :func:`_increment_forms` entry (every subweight of the
  leaf then reads after its update). With ``None``, a mean narrower than
  the compute dtype is rounded on storage and its increment is the change
  of the value actually stored; otherwise the increment is
  :math:`\gamma\Delta\mu - (1 - \gamma)\mu`. Reading the old mean there
  costs a copy of it on XLA:CPU (an output that reads an input which is
  overwritten in place). With ``AFTER`` the increment is read from the new
  mean and the step, :math:`\mu' - \mu = \Delta\mu - \frac{1 -
  \gamma}{\gamma} \mu'`, of which only the second term is returned (the
  caller adds the steps of all subweights at once); with ``ZERO`` the new
  mean is 0 and so is the share of the increment.
  """
  if form == ZERO:
    # 0 times the old mean, as the general form computes it (a broadcast 0
    # would be written out and then copied into the donated buffer).
    return stored * jnp.zeros((), stored.dtype), jnp.zeros(stored.shape, dtype)
  scaled = scaled_storage.is_scaled(stored.dtype)
  if stored.dtype != dtype:
    if scaled:
      return scaled_storage.update_leaf(stored, decay, -step, scale_step)
    old = stored.astype(dtype)
    new = precision.round_to_storage(old - leak * old + decay * step,
                                     stored.dtype)
    return new, new.astype(dtype) - old
  if scaled:
    change, new_scale, factor = (value.astype(dtype) for value in scale_step)
    # m' = f m + (gamma / s') d, and s' m' - s m = (s' f - s) m + gamma d.
    new = stored * factor + (decay / new_scale) * step
    new_value, old_term = new_scale * new, change * stored
  else:
    new = stored - leak * stored + decay * step
    new_value, old_term = new, -leak * stored
  if form == AFTER:
    # The step itself is added once per leaf, from summed_mean_steps.
    return new, -(leak / decay) * new_value
  return new, old_term + decay * step


class _Stored(NamedTuple):
  """The params' increments and the new state's leaves."""

  increments: list[jax.Array]
  means: list[list[jax.Array]]
  variances: list[list[jax.Array]]
  factors: list[list[jax.Array]]
  tangents: list[list[jax.Array]]
  mean_scales: tuple[tuple[jax.Array, jax.Array], ...]


def _predict_and_store(
    hyper: _Hyperparameters,
    state: BayesianMultiscaleState,
    grad_leaves: list[jax.Array],
    means: list[list[jax.Array]],
    variances: list[list[jax.Array]],
    factors: list[list[jax.Array]],
    tangents: list[list[jax.Array]],
    trainable: list[int],
    conditioned: _Conditioned | None,
    tangent_steps: list[list[jax.Array]] | None,
    scale_changes: list[tuple[jax.Array, jax.Array]],
    dtype: Any,
) -> _Stored:
  r"""Applies the prior's prediction to the posterior and stores it.

  :math:`\mu_i \leftarrow \gamma_i(\mu_i + \Delta\mu_i)`,
  :math:`D_i \leftarrow D_i - (1 - \gamma_i^2) D_i + c q_i`,
  :math:`U_i \leftarrow U_i - (1 - \gamma_i) U_i` and the means'
  sensitivities :math:`T_i \leftarrow \gamma_i(T_i + \Delta T_i)`, each
  written with :math:`1 - \gamma` (taken in float64 where concrete) so that
  a decay close to 1 keeps its precision; a mean narrower than float64
  decays through its scale. Where the observation was not valid the prior
  belief is carried instead of the posterior. ``scale_changes`` holds, per
  trainable leaf, the prior scale :math:`c` after this step and its ratio
  :math:`\kappa` to the one before: the covariance follows the scale,
  :math:`D \leftarrow \kappa D`, :math:`U \leftarrow \sqrt\kappa\, U`
  (the approximation :math:`\Sigma \propto c` of the learned prior, which
  keeps the belief the one a filter run at the new scale would hold).

  The means and sensitivities are stored first, and every variance and
  factor after them (:func:`_after_written`), so that XLA orders every read
  of the old state before the loops that overwrite it and updates the
  donated state in place. The covariance's prediction is
  :func:`gaussian_belief.predict`.
  """
  posterior = None if conditioned is None else conditioned.posterior
  valid = jnp.asarray(False) if conditioned is None else conditioned.valid
  scales, scale_steps = zip(*(
      scaled_storage.advance_scale(scale, leak[0])
      for scale, leak in zip(state.mean_scales, hyper.leaks)))
  increments, new_means = _store_means(
      hyper, grad_leaves, means, trainable, posterior, valid, scale_steps,
      state.count, dtype)
  new_tangents = [list(leaves) for leaves in tangents]
  for index, leaves in enumerate(tangents):
    for flat, position in enumerate(trainable):
      # Stored before the variance: its step read the old variance.
      tangent = leaves[position].astype(dtype)
      step = 0.0 if tangent_steps is None else tangent_steps[index][flat]
      new_tangents[index][position] = precision.round_to_storage(
          tangent - jnp.asarray(hyper.leaks[index][0], dtype) * tangent
          + jnp.asarray(hyper.decays[index], dtype) * step,
          leaves[position].dtype)
  belief = _carried_belief(
      variances, factors, trainable, posterior, valid,
      [change for _, change in scale_changes] if tangents else None, dtype)
  predicted = gaussian_belief.predict(
      belief, [leak for leak, _ in hyper.leaks],
      [variance_leak for _, variance_leak in hyper.leaks],
      [[scale * jnp.asarray(process_variance, dtype)
        for scale, _ in scale_changes]
       for process_variance in hyper.process_variances])
  # Every variance and factor is written after the new means and
  # sensitivities, whose steps read the old variances (see _after_written),
  # and, where the params' increments sum the steps of one subweight, after
  # them: they read its old variance itself (with two or more they read the
  # sum of the variances, which XLA writes out for the innovation).
  ordered = [leaves[position] for leaves in new_means + new_tangents
             for position in trainable]
  summed = _summed_subweights(_increment_forms(hyper.decays))
  if posterior is not None and len(
      hyper.decays if summed is None else summed) == 1:
    ordered += [increments[position] for position in trainable]
  anchor: float | jax.Array = 0.0
  if ordered:
    anchor = _after_written(ordered, state.count, dtype)
  return _Stored(
      increments, new_means,
      _with_positions(variances, trainable, predicted.diagonals, anchor),
      _with_positions(factors, trainable, predicted.factors, anchor),
      new_tangents, tuple(scales))


def _carried_belief(
    variances: list[list[jax.Array]],
    factors: list[list[jax.Array]],
    trainable: list[int],
    posterior: gaussian_belief.Posterior | None,
    valid: jax.Array,
    changes: list[jax.Array] | None,
    dtype: Any,
) -> gaussian_belief.Belief:
  r"""The belief to predict from: the posterior where the observation was
  valid, else the prior; times the prior scale's change ``changes`` (per
  trainable leaf, :math:`\kappa`: :math:`D \leftarrow \kappa D`,
  :math:`U \leftarrow \sqrt\kappa U`) where it is learned."""
  def carried(stored: list[list[jax.Array]],
              new: list[list[jax.Array]] | None, power: float,
              ) -> list[list[jax.Array]]:
    result: list[list[jax.Array]] = []
    for index, leaves in enumerate(stored):
      result.append([])
      for flat, position in enumerate(trainable):
        value = leaves[position].astype(dtype)
        if new is not None:
          value = jnp.where(valid, new[index][flat], value)
        if changes is not None:
          change = changes[flat]
          value = (change if power == 1.0
                   else jnp.sqrt(change)[..., None]) * value
        result[-1].append(value)
    return result
  return gaussian_belief.Belief(
      diagonals=carried(
          variances, None if posterior is None else posterior.diagonals, 1.0),
      factors=carried(
          factors, None if posterior is None else posterior.factors, 0.5))


def _with_positions(
    stored: list[list[jax.Array]], trainable: list[int],
    new: list[list[jax.Array]], anchor: float | jax.Array,
) -> list[list[jax.Array]]:
  """``stored`` with its trainable leaves replaced by ``new`` (plus the
  exact 0 ``anchor``), rounded to the stored dtypes."""
  result = [list(leaves) for leaves in stored]
  for index, leaves in enumerate(result):
    for flat, position in enumerate(trainable):
      leaves[position] = precision.round_to_storage(
          new[index][flat] + anchor, leaves[position].dtype)
  return result


def _after_written(
    arrays: Sequence[jax.Array], count: jax.Array, dtype: Any) -> jax.Array:
  """An exact 0 that XLA can only compute after writing out ``arrays``.

  An exact 0 read from one entry of ``arrays`` (``0 * (x != x)``) does not
  order anything where an array is not an output of the step: XLA
  recomputes that entry inside the consumer, reading the old state there.
  And XLA:CPU drops ``lax.optimization_barrier`` before it places copies.
  An operand of a ``lax.cond`` is written out, and the cond's result is
  read only after it (one cond per step, reading one entry of each array).
  So an increment that reads the old means (narrow
  storage, a traced decay) is written once (one write and one read of a
  params-sized array, where copying the old means costs one of each per
  subweight), and the loops that overwrite the means are ordered after it.
  """
  # The operands keep their shapes (a reshaped one would be another array),
  # and each branch reads every one (XLA drops an operand that none reads).
  def entry(leaves: list[jax.Array], at: int) -> jax.Array:
    return _sum_entries([leaf[(at,) * leaf.ndim].astype(dtype)
                         for leaf in leaves])
  # The step count is never negative, but XLA cannot know it (a predicate
  # read from the arrays would read them before they are written).
  anchor = jax.lax.cond(
      count < 0, lambda leaves: entry(leaves, -1),
      lambda leaves: entry(leaves, 0), list(arrays))
  return (anchor != anchor).astype(dtype) * 0.0


def _sum_entries(values: list[jax.Array]) -> jax.Array:
  return sum(values[1:], values[0])


def _store_means(
    hyper: _Hyperparameters,
    grad_leaves: list[jax.Array],
    means: list[list[jax.Array]],
    trainable: list[int],
    posterior: gaussian_belief.Posterior | None,
    valid: jax.Array,
    scale_steps: Sequence[scaled_storage.ScaleStep],
    count: jax.Array,
    dtype: Any,
) -> tuple[list[jax.Array], list[list[jax.Array]]]:
  r"""The params' increments and the new means.

  Where every subweight of a leaf reads its increment after its update
  (:func:`_mean_step`, forms ``AFTER`` and ``ZERO``), the leaf's increment
  is :math:`\sum_i \Delta\mu_i - \sum_i \frac{1 - \gamma_i}{\gamma_i}
  \mu_i'` over the ``AFTER`` subweights, whose first sum the kernel reads
  from their :math:`\sum_i D_i` (``summed_mean_steps``): the loop that
  updates the params then reads no subweight's old mean or variance.
  Elsewhere (a narrow storage dtype, a traced decay) the increment reads the
  old means: it is written out first, and the new means after it
  (:func:`_after_written`). ``count`` is the state's step count.
  """
  forms = _increment_forms(hyper.decays)
  increments = [jnp.zeros_like(grad) for grad in grad_leaves]
  new_means = [list(leaves) for leaves in means]
  slow = []
  for flat, position in enumerate(trainable):
    read_after_update = posterior is not None and all(
        form == ZERO or (form == AFTER and leaves[position].dtype == dtype)
        for form, leaves in zip(forms, means))
    shape = grad_leaves[position].shape
    if read_after_update and AFTER in forms:
      assert posterior is not None
      increments[position] = jnp.where(
          valid, posterior.summed_mean_steps[flat], 0.0)
    for index, (decay, (leak, _)) in enumerate(
        zip(hyper.decays, hyper.leaks)):
      step = (jnp.zeros(shape, dtype) if posterior is None else
              jnp.where(valid, posterior.mean_steps[index][flat], 0.0))
      new_mean, term = _mean_step(
          means[index][position], step, jnp.asarray(decay, dtype),
          jnp.asarray(leak, dtype), scale_steps[index], dtype,
          forms[index] if read_after_update else None)
      increments[position] = increments[position] + term
      new_means[index][position] = new_mean
    if not read_after_update:
      slow.append(position)
  increments = [
      increment.astype(grad.dtype)
      for increment, grad in zip(increments, grad_leaves)]
  if slow:
    anchor = _after_written([increments[p] for p in slow], count, dtype)
    for position in slow:
      for leaves in new_means:
        leaves[position] = leaves[position] + anchor.astype(
            leaves[position].dtype)
  return increments, new_means


def _check_learn_prior(learn_prior: Any) -> str | None:
  """``learn_prior`` as ``None``, ``'global'`` or ``'per_weight'``."""
  if isinstance(learn_prior, str):
    if learn_prior != prior_learning.PER_WEIGHT:
      raise ValueError(
          "`learn_prior` must be False, True or 'per_weight', got "
          f'{learn_prior!r}.')
    return prior_learning.PER_WEIGHT
  if not isinstance(learn_prior, bool | np.bool_):
    raise TypeError(
        "`learn_prior` must be False, True or 'per_weight', got "
        f'{type(learn_prior).__name__} {learn_prior!r}.')
  return prior_learning.GLOBAL if learn_prior else None


def _check_rank(rank: Any) -> int:
  if rank is None:
    return 0
  if checks.is_traced(rank):
    raise TypeError(
        '`rank` sets the shapes of the state, so it cannot be traced: under '
        "optax.inject_hyperparams pass static_args=('rank',).")
  if (isinstance(rank, jax.Array) and rank.ndim == 0
      and jnp.issubdtype(rank.dtype, jnp.integer)):
    rank = int(rank)
  return checks.check_integer(rank, 'rank', low=0)


def _check_variance_update(variance_update: Any, rank: int) -> str:
  if variance_update is None:
    # The diagonal default was chosen by measurement (docs: "Beliefs");
    # a low-rank belief keeps exact marginals.
    return 'moment_matching' if rank else 'others_as_noise'
  if variance_update not in gaussian_belief.VARIANCE_UPDATES:
    raise ValueError(
        '`variance_update` must be None or one of '
        f'{", ".join(map(repr, gaussian_belief.VARIANCE_UPDATES))}, got '
        f'{variance_update!r}.')
  if rank and variance_update != 'moment_matching':
    raise ValueError(
        f'`variance_update={variance_update!r}` applies to a diagonal '
        f'belief (rank=0), but rank={rank}: a low-rank belief keeps the '
        'exact marginal variances (moment matching).')
  return cast(str, variance_update)


def _init_state(
    params: optax.Params, prior: ar1_prior.AR1Prior, rank: int,
    learn_prior: str | None, state_dtype: DTypeLike | None,
) -> BayesianMultiscaleState:
  num = prior.num_components
  initial_entries = prior.initial_variances or ()
  leaves = jax.tree.leaves(params)
  for leaf in leaves:
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
      raise TypeError(
          'bayesian_multiscale tracks a Gaussian belief over real weights; '
          f'got a complex param of dtype {leaf.dtype}. Split complex params '
          'into real and imaginary parts.')
  scalar_dtype = precision.compute_dtype(*(leaf.dtype for leaf in leaves))

  def mean(param: Any) -> jax.Array:
    return subweight_state.initial_leaf(param, (), state_dtype)

  def variance(param: Any, value: Any) -> jax.Array:
    if not subweight_state.is_trainable(param.dtype):
      return jnp.zeros_like(param)
    # full_like keeps each param's sharding, like zeros_like.
    return jnp.full_like(
        param, value, dtype=_variance_dtype(param.dtype, state_dtype))

  def zeros(param: Any) -> jax.Array:
    dtype = (_variance_dtype(param.dtype, state_dtype)
             if subweight_state.is_trainable(param.dtype) else param.dtype)
    return jnp.zeros_like(param, dtype=dtype)

  def factor(param: Any) -> jax.Array:
    return zeros(param)[..., None].repeat(rank, axis=-1)

  per_weight = learn_prior == prior_learning.PER_WEIGHT
  log_scale = (jax.tree.map(zeros, params) if per_weight
               else jnp.zeros([], scalar_dtype))

  return BayesianMultiscaleState(
      count=jnp.zeros([], jnp.int32),
      means=tuple(jax.tree.map(mean, params) for _ in range(num)),
      variances=tuple(
          jax.tree.map(lambda param, value=value: variance(param, value),
                       params)
          for value in initial_entries),
      factors=tuple(
          jax.tree.map(factor, params) for _ in range(num if rank else 0)),
      mean_scales=tuple(scaled_storage.initial_scale() for _ in range(num)),
      log_process_scale=log_scale,
      log_noise_scale=jnp.zeros([], scalar_dtype),
      innovation_variance=jnp.full([], jnp.nan, scalar_dtype),
      skipped_observations=jnp.zeros([], jnp.int32),
      prior_tangents=tuple(
          jax.tree.map(zeros, params)
          for _ in range(num if learn_prior is not None else 0)),
      prior_learning=prior_learning.initial_state(
          lambda: jax.tree.map(zeros, params) if per_weight else jnp.zeros(
              [], scalar_dtype), scalar_dtype),
      decays=tuple(jnp.asarray(decay, scalar_dtype) for decay in prior.decays),
  )


def bayesian_multiscale(
    decays: Sequence[float] | ArrayLike | None = None,
    process_variances: Sequence[float] | ArrayLike | None = None,
    noise_variance: ArrayLike | None = None,
    *,
    prior: ar1_prior.AR1Prior | None = None,
    initial_variances: Sequence[float] | ArrayLike | None = None,
    rank: int | None = None,
    variance_update: str | None = None,
    learn_prior: bool | Literal['per_weight'] = False,
    learn_noise_variance: bool = False,
    prior_learning_rate: optax.ScalarOrSchedule = 0.03,
    prior_window: float = 100.0,
    outlier_threshold: float | None = None,
    state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Bayesian multiscale learner (an extended Kalman filter).

  Let :math:`\gamma_i` be ``decays[i]``, :math:`q_i` be
  ``process_variances[i]`` and :math:`r` be ``noise_variance``. Every weight
  is :math:`w = w_0 + \sum_i \omega_i` (:math:`w_0` the initial params, a
  fixed prior mean), every subweight an AR(1) process
  :math:`\omega_i \leftarrow \gamma_i \omega_i + \mathcal N(0, q_i)`, and the
  state holds a Gaussian belief over all subweights of all weights with
  means :math:`\mu_i` and covariance :math:`\mathrm{diag}(D) - UU^\top`
  (:math:`U` of rank :math:`L` = ``rank``). Each update observes one example
  (or a minibatch) and predicts ahead; for a diagonal belief, one output
  and ``variance_update='moment_matching'`` (the default for ``rank=0``,
  ``'others_as_noise'``, differs in the variance update: see
  ``variance_update`` below; the module docstring has the general case)

  .. math::

    S &= R + \sum_{\text{weights}} J^2 \sum_i v_i, \\
    \mu_i &\leftarrow \gamma_i \big(\mu_i + v_i J e / S\big), \qquad
    v_i \leftarrow \gamma_i^2 \big(v_i - (v_i J)^2/S\big) + c\, q_i,

  and returns the change of :math:`\sum_i \mu_i`, so that after
  ``optax.apply_updates`` the params are the predictive mean for the next
  example. The learning rate of subweight :math:`i` on the gradient
  :math:`-J e/r` is :math:`\gamma_i v_i r / S`: inferred per weight, per
  step.

  **Scalar output** (the contract). ``grads`` is the gradient of the
  example's negative log-likelihood :math:`(y - \hat y)^2/(2r)` and the extra
  argument ``jacobian`` is a params-shaped pytree :math:`J = \partial \hat
  y/\partial w`, both at the params that made the prediction :math:`\hat y`.
  Then :math:`J e = -r\,` ``grads``, so nothing else is needed; the
  residual :math:`e = y - \hat y` may also be passed as ``residual`` (a
  scalar), and must be where ``learn_prior=True``. ``observation_covariance``
  is then a scalar :math:`R` (default :math:`r`).

  **Several outputs** (:math:`N` of them: a vector output, a minibatch of
  scalar outputs, or a minibatch of vectors flattened). Pass ``residual``
  of shape ``(N,)``, ``jacobian`` with leaves of shape
  ``(N, *param.shape)``, and optionally ``observation_covariance``
  :math:`R` of shape ``(N, N)`` (default :math:`rI`; block-diagonal for a
  minibatch). ``grads`` is then only used for its structure and dtype. The
  update is the joint one with :math:`S` an :math:`N \times N` matrix
  (Cholesky-factored); it costs :math:`N^2` times the params per step, so
  for large :math:`N` scan over the examples instead (each a separate
  update, which also advances the prior by one step per example).
  :func:`gaussian_observation` and :func:`categorical_observation` compute
  these extra arguments for a model function. ``N = 0`` observes nothing.

  **The belief.** ``rank=0`` keeps a diagonal covariance, updated by
  ``variance_update``:

  * ``'moment_matching'``: the exact posterior's marginal variances,
    :math:`v_i - v_i^2\, \mathrm{diag}(J^\top S^{-1} J)`;
  * ``'mean_field'``: each subweight as if it alone explained the
    observation, :math:`1/v_i \leftarrow 1/v_i + \mathrm{diag}(J^\top
    R^{-1} J)`;
  * ``'others_as_noise'`` (default): the other weights' uncertainty
    counted as observation noise, :math:`1/v_i \leftarrow 1/v_i + b/(1 - s b)` with
    :math:`b = \mathrm{diag}(J^\top S^{-1} J)` and :math:`s = \sum_i v_i`
    of the same weight.
  * ``'weight_marginal'``: every subweight of a weight shrinks by the
    factor that keeps the weight's own marginal variance exact,
    :math:`v_i \leftarrow v_i (1 - s b)` (the best diagonal rule on the drifting
    teacher MLP, the worst in the linear 1/f world).

  ``rank=L > 0`` keeps :math:`\mathrm{diag}(D) - UU^\top` over all
  :math:`kP` subweights: an observation appends the :math:`N` columns of
  :math:`\Sigma H^\top L_S^{-\top}` to :math:`U` and cuts back to the
  :math:`L` leading directions, keeping the marginal variances exact and the
  covariance positive definite by construction (the docs page *Bayesian
  multiscale*, *Beliefs*). With :math:`L \ge kP` it
  is the joint EKF of all subweights. Memory :math:`k(L + 2)P`; a step
  costs :math:`O(kP(L + N)^2)` and one :math:`(L + N)`-square
  eigendecomposition.

  **Learning the prior** (``learn_prior``; empirical Bayes online). The
  process variances in use are :math:`c\, q_i`, and :math:`\log c` (one
  global scale, or one per weight with ``learn_prior='per_weight'``) follows
  the gradient of the log predictive likelihood of the recent observations,
  *including* the residual's own dependence on :math:`c` (a wider prior
  tracks faster and makes :math:`e` smaller): the state carries the means'
  sensitivity :math:`T_i = \partial\mu_i/\partial\log c`, one params-shaped
  array per subweight, with

  .. math::

    g = \tfrac12\big(a^\top X a - \mathrm{tr}(S^{-1}X)\big) + a^\top H T,
    \qquad a = S^{-1}e, \quad X = S - R,

  and takes a normalised step of at most :math:`\eta` =
  ``prior_learning_rate`` (Adam's moments of :math:`g`), so it moves as
  fast from :math:`100\times` too wide as from too tight. When :math:`c`
  changes, the covariance follows it (:math:`\Sigma \propto c`, the
  approximation the sensitivity makes). With ``learn_noise_variance=True``
  the noise scale :math:`\rho` is profiled out over a window of
  ``prior_window`` observations (:math:`\rho` = the window's mean of
  :math:`e^\top S^{-1} e` per output; the means depend on :math:`c` only, so
  the model's process and noise variances are :math:`\rho c q_i` and
  :math:`\rho R`), and the step follows the window's profile likelihood.
  Take both when the noise variance is not known: with the noise fixed too
  large no scale of the prior can calibrate :math:`S`, and the likelihood
  drives :math:`c` down. The derivation, the bounds and the per-weight
  rule are in the API reference beside :class:`PriorLearningState`;
  measurements in the docs (*Which optimizer to use*, *Bayesian
  multiscale*). To choose the scale
  once from a warm-up window instead, see :func:`fit_prior`.

  **Outliers** (``outlier_threshold=t``). A residual whose whitened norm
  :math:`\|L_S^{-1} e\|` exceeds :math:`t\sqrt N` is shrunk to it before
  the update (a Huber-type robust Kalman filter; needs ``residual``).
  Default ``None``: the exact Kalman update.

  **Bad observations.** A Jacobian, residual, gradient or observation
  covariance that is not finite, or an innovation covariance that is not
  positive definite, is skipped: the state gets only the prior's prediction
  (as for a missing observation), and ``state.skipped_observations`` counts
  it. Concrete bad values of ``observation_covariance`` are refused with a
  ``ValueError``.

  Args:
    decays: :math:`\gamma_i \in (-1, 1]`, one per subweight, in at least
      float32 (:math:`1 - \gamma_i` is taken in float64 where concrete).
    process_variances: :math:`q_i \ge 0`, one per subweight (as in
      :func:`multiscale_optax.kalman_learning_rates`).
    noise_variance: :math:`r > 0`, the observation noise variance of a
      scalar output (the default :math:`R = rI`).
    initial_variances: :math:`v_i` for the first example; default the
      stationary :math:`q_i/(1 - \gamma_i^2)`, required where
      :math:`\gamma_i = 1` (the rule of :class:`AR1Prior`). Read only by
      ``init``: a list, tuple or NumPy array.
    prior: an :class:`AR1Prior` in place of ``decays``,
      ``process_variances`` and ``initial_variances`` (the same learner);
      pass ``noise_variance`` by name then.
    rank: :math:`L \ge 0`, the rank of the covariance's low-rank part
      (``None`` or 0: a diagonal belief). It sets the state's shapes, so
      under ``optax.inject_hyperparams`` name it in ``static_args``.
    variance_update: for ``rank=0``, one of ``'others_as_noise'`` (the
      default, chosen by measurement), ``'moment_matching'``,
      ``'mean_field'`` and ``'weight_marginal'`` (above).
    learn_prior: ``False``; ``True`` to learn one global scale :math:`c`
      of the process variances online (above); ``'per_weight'`` to learn
      one per weight (params-shaped: for streams where some weights drift
      and others stay; its sensitivities ignore the covariance between
      weights, so use it with the diagonal belief). Needs the ``residual``
      extra argument.
    learn_noise_variance: also learn the scale :math:`\rho` of the
      observation noise, profiled over the window (needs ``learn_prior``).
    prior_learning_rate: :math:`\eta \ge 0`, the largest step of
      :math:`\log c` per observation; a scalar or an ``optax.Schedule`` of
      the step count.
    prior_window: :math:`\ge 1`, the number of recent observations whose
      likelihood the learned scales follow (forgetting factor
      :math:`1 - 1/` ``prior_window``).
    outlier_threshold: ``None`` (the exact Kalman update) or :math:`t > 0`,
      the whitened residual norm per output beyond which a residual is
      shrunk (above); 5 changes one calibrated observation in
      :math:`2 \cdot 10^6`.
    state_dtype: dtype of the means :math:`\mu_i` (``None``: each param's
      dtype; float16, bfloat16, float32 or float64); the covariance is kept
      in at least float32. Arithmetic is in at least float32 and updates
      keep the incoming dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`BayesianMultiscaleState`.

  Raises:
    TypeError: an argument has the wrong type (complex params, decays
      narrower than float32, a float8 ``state_dtype``), or ``prior`` is
      given with ``decays``, ``process_variances`` or ``initial_variances``.
    ValueError: lengths differ, a value lies outside its range, or
      ``initial_variances`` is missing where a decay is 1.

  Examples:
    One weight, one subweight: the scalar Kalman filter.

    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> opt = mso.bayesian_multiscale([0.5], [0.75], 1.0)  # v_0 = 1
    >>> params = jnp.zeros(1)
    >>> state = opt.init(params)
    >>> y, x = 2.0, jnp.ones(1)
    >>> prediction = x @ params
    >>> grads = -x * (y - prediction) / 1.0  # of (y - x.w)^2 / (2 r)
    >>> updates, state = opt.update(grads, state, params, jacobian=x)
    >>> params = optax.apply_updates(params, updates)
    >>> print(params)  # 0.5 * (0 + 1 / (1 + 1) * 2)
    [0.5]

    The same learner from an :class:`AR1Prior`:

    >>> prior = mso.AR1Prior(decays=[0.5], process_variances=[0.75])
    >>> opt = mso.bayesian_multiscale(prior=prior, noise_variance=1.0)

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023. Jones, `Learning at Multiple
    Timescales <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022. Chang,
    Durán-Martín, Shestopaloff, Jones & Murphy, "Low-rank extended Kalman
    filtering for online learning of neural networks from streaming data",
    CoLLAs 2023.
  """
  # optax.inject_hyperparams turns a NumPy `initial_variances` into a JAX
  # array and would let a user change it after init, where it has no effect.
  initial_is_array = isinstance(initial_variances, jax.Array)
  _check_decay_dtype(decays)
  ar1, noise_variance = ar1_prior.arguments(
      prior, decays, process_variances, noise_variance,
      initial_variances=initial_variances)
  _check_decay_dtype(ar1.decays)
  init_fn, scored_update = _scored_learner(
      ar1, noise_variance, warn_initial_variances=initial_is_array,
      rank=rank, variance_update=variance_update, learn_prior=learn_prior,
      learn_noise_variance=learn_noise_variance,
      prior_learning_rate=prior_learning_rate, prior_window=prior_window,
      outlier_threshold=outlier_threshold, state_dtype=state_dtype)

  def update_fn(
      updates: optax.Updates,
      state: BayesianMultiscaleState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, BayesianMultiscaleState]:
    updates, state, _ = scored_update(updates, state, params, **extra_args)
    return updates, state

  # optax's protocols take any OptState and no named extra arguments;
  # update_fn takes its own state and the observation's extra arguments.
  return optax.GradientTransformationExtraArgs(
      cast(optax.TransformInitFn, init_fn),
      cast(optax.TransformUpdateExtraArgsFn, update_fn))


def _scored_learner(
    ar1: ar1_prior.AR1Prior, noise_variance: Any, *, rank: Any,
    variance_update: Any,
    learn_prior: Any, learn_noise_variance: Any,
    prior_learning_rate: optax.ScalarOrSchedule, prior_window: Any,
    outlier_threshold: Any, state_dtype: DTypeLike | None,
    warn_initial_variances: bool = False,
) -> tuple[Callable[[optax.Params], BayesianMultiscaleState],
           Callable[..., tuple[optax.Updates, BayesianMultiscaleState,
                               _Score]]]:
  """The checked learner of :func:`bayesian_multiscale` with prior ``ar1``:
  its ``init`` and an ``update`` that also returns the observation's
  :class:`_Score`. ``warn_initial_variances``: warn on every update that
  the initial variances (given as a JAX array) are read only by init."""
  _check_noise_variance(noise_variance)
  rank = _check_rank(rank)
  variance_update = _check_variance_update(variance_update, rank)
  learn_mode = _check_learn_prior(learn_prior)
  learn_noise_variance = checks.check_bool(
      learn_noise_variance, 'learn_noise_variance')
  if learn_noise_variance and learn_mode is None:
    raise ValueError(
        "`learn_noise_variance=True` needs `learn_prior=True` (or "
        "'per_weight').")
  if not callable(prior_learning_rate):
    checks.check_scalar(
        prior_learning_rate, 'prior_learning_rate', low=0.0, high=np.inf)
  checks.check_scalar(prior_window, 'prior_window', low=1.0, high=np.inf,
                      high_inclusive=False)
  checks.check_state_dtype(state_dtype, 'state_dtype')
  if outlier_threshold is not None:
    checks.check_scalar(outlier_threshold, 'outlier_threshold', low=0.0,
                        high=np.inf, low_inclusive=False,
                        high_inclusive=False)
  hyperparameters = _Hyperparameters(
      decays=ar1.decays, leaks=tuple(map(precision.leak, ar1.decays)),
      process_variances=ar1.process_variances, noise_variance=noise_variance,
      rank=rank, variance_update=variance_update, learn_prior=learn_mode,
      learn_noise_variance=learn_noise_variance,
      prior_learning_rate=prior_learning_rate, prior_window=prior_window,
      outlier_threshold=outlier_threshold)

  def init_fn(params: optax.Params) -> BayesianMultiscaleState:
    return _init_state(params, ar1, rank, learn_mode, state_dtype)

  def scored_update(
      updates: optax.Updates,
      state: BayesianMultiscaleState,
      params: optax.Params | None = None,
      *,
      jacobian: optax.Params | None = None,
      residual: jax.Array | None = None,
      observation_covariance: jax.Array | None = None,
      pseudo_residual: bool | gaussian_belief.PseudoResidual = False,
      **extra_args: Any,
  ) -> tuple[optax.Updates, BayesianMultiscaleState, _Score]:
    del params, extra_args
    _check_pseudo_residual(pseudo_residual, hyperparameters)
    if warn_initial_variances:
      warnings.warn(
          '`initial_variances` is read only by init: given as a JAX array '
          '(as optax.inject_hyperparams passes a NumPy array), a change '
          'after init has no effect. Pass it as a tuple to keep it static.',
          stacklevel=2)
    return _update(hyperparameters, updates, state, jacobian, residual,
                   observation_covariance)

  return init_fn, scored_update


def get_bayesian_subweights(
    params: optax.Params,
    opt_state: optax.OptState,
) -> BayesianSubweights:
  r"""The belief of a running Bayesian multiscale learner, for plotting.

  Reads :math:`\mu_i` and the marginal variances
  :math:`v_i = D_i - \sum_l U_{i,l}^2` from the state, the prior mean
  :math:`w_0 = w - \sum_i \mu_i` from the params, and forms the learning
  rates :math:`\gamma_i v_i / S` with the decays and the last innovation
  variance :math:`S` the state keeps. It takes what
  :func:`multiscale_optax.get_subweights` takes: the params and the state.
  Under ``optax.masked``, masked leaves are ``optax.MaskedNode`` in every
  returned tree.

  Args:
    params: the current params.
    opt_state: the state of :func:`bayesian_multiscale`, or of an optax
      chain (or ``inject_hyperparams`` or ``masked`` wrapper) holding
      exactly one :class:`BayesianMultiscaleState`.

  Returns:
    A :class:`BayesianSubweights`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> opt = mso.bayesian_multiscale([0.5, 0.9], [0.75, 0.19], 1.0)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> belief = mso.get_bayesian_subweights(params, state)
    >>> print(belief.variances[0], belief.variances[1])
    [1. 1.] [1. 1.]

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023.
  """
  state = subweight_state.find_state(opt_state, BayesianMultiscaleState)

  def over_state(function: Callable[..., Any], *trees: Any) -> Any:
    """Maps over the state's leaves; masked leaves stay MaskedNode."""
    return jax.tree.map(
        lambda first, *rest: (first if subweight_state.is_masked(first)
                               else function(first, *rest)),
        *trees, is_leaf=subweight_state.is_masked)

  means = tuple(
      over_state(
          lambda leaf, scale=scale: scaled_storage.value_of(
              leaf, scale).astype(leaf.dtype)
          if scaled_storage.is_scaled(leaf.dtype) else leaf, tree)
      for tree, scale in zip(state.means, state.mean_scales))

  prior_mean = over_state(
      lambda first, param, *rest: subweight_state.remainder(
          param, (first, *rest)), means[0], params, *means[1:])
  # The state's variances are in units of the learned noise scale.
  noise_scale = jnp.exp(state.log_noise_scale)
  if state.factors:
    variances = tuple(
        over_state(
            lambda diagonal, factor: (noise_scale * (diagonal - jnp.sum(
                jnp.square(factor), axis=-1))).astype(diagonal.dtype),
            diagonal_tree, factor_tree)
        for diagonal_tree, factor_tree in zip(state.variances, state.factors))
  else:
    variances = tuple(
        over_state(lambda diagonal: (noise_scale * diagonal).astype(
            diagonal.dtype), tree)
        for tree in state.variances)
  innovation = state.innovation_variance
  rates = tuple(
      over_state(
          lambda v, decay=decay: (
              decay * v.astype(innovation.dtype) / innovation).astype(
                  v.dtype), tree)
      for decay, tree in zip(state.decays, variances))
  return BayesianSubweights(
      decays=state.decays,
      prior_mean=prior_mean,
      means=means,
      variances=variances,
      learning_rates=rates,
      process_scale=jax.tree.map(jnp.exp, state.log_process_scale),
      noise_scale=noise_scale,
  )
