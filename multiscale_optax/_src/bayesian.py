r"""The Bayesian multiscale learner: learning rates inferred from a 1/f prior.

Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
structured environments", ICLR 2023, derive the multiscale learner of Jones,
`Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022, as approximate Bayesian inference: each weight is a sum of
subweights, the prior says every subweight is an AR(1) process, and a Gaussian
belief that is diagonal over all subweights of all weights is tracked by an
extended Kalman filter. Its learning rates are not hyperparameters: they are
the filter's gains, inferred per weight and per step.

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

The belief before observation :math:`t` is
:math:`\omega_{i} \sim \mathcal N(\mu_i, v_i)` for every subweight of every
weight, independent; the params are its mean :math:`w_0 + \sum_i \mu_i`.
With :math:`J = \partial f/\partial w` at the params (the extended Kalman
filter's linearisation) and the residual :math:`e = y - f`, the exact
Gaussian update of this belief is a rank-:math:`C` correction of a full
covariance; keeping its diagonal gives, for one scalar output,

.. math::

  S = R + \sum_{\text{weights}} J^2 \sum_i v_i, \qquad
  \mu_i \leftarrow \mu_i + \frac{v_i J e}{S}, \qquad
  v_i \leftarrow v_i - \frac{(v_i J)^2}{S},

and for :math:`C` outputs (:math:`J` of shape :math:`C \times` weights,
:math:`V_i = \mathrm{diag}(v_i)`)

.. math::

  S = R + \sum_i J V_i J^\top, \qquad
  \mu_i \leftarrow \mu_i + V_i J^\top S^{-1} e, \qquad
  v_i \leftarrow v_i - v_i^2\, \mathrm{diag}(J^\top S^{-1} J).

Then the belief is carried to the next step by the prior:
:math:`\mu_i \leftarrow \gamma_i \mu_i`,
:math:`v_i \leftarrow \gamma_i^2 v_i + q_i`. :math:`S` is a single
reduction over the whole network: every weight's step depends on the
uncertainty of all the others (updating each weight as if it were alone
over-reacts in proportion to the number of weights, and diverges in the
10-dimensional benchmark of ``benchmarks/online_1f.py``).

In terms of eq. (1) of the NeurIPS paper, subweight :math:`i` decays by
:math:`\gamma_i` and learns from the gradient :math:`u = -J e / r` of the
negative log-likelihood :math:`(y - f)^2/(2r)` at rate
:math:`\alpha_i = \gamma_i v_i r / S` (per weight, per step). With one weight
and one subweight this is the scalar Kalman filter exactly; with one weight
and :math:`k` subweights it is the Kalman filter of the sum of AR(1)
processes with its covariance projected onto the diagonal after every
observation.

Memory: :math:`2k` params-shaped arrays (:math:`\mu_i` and :math:`v_i`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from multiscale_optax._src import checks
from multiscale_optax._src import precision
from multiscale_optax._src import treedefs


class BayesianMultiscaleState(NamedTuple):
  r"""State of :func:`bayesian_multiscale`.

  Attributes:
    count: number of updates applied so far (``int32``).
    means: :math:`\mu_i`, one params-shaped pytree per subweight: the
      predictive means of the subweights for the next example (offsets from
      the initial params, which are the fixed prior mean).
    variances: :math:`v_i`, one params-shaped pytree per subweight: their
      predictive variances.
    log_process_scale: :math:`\log c`, a scalar: the process variances in
      use are :math:`c\, q_i`. Zero unless ``learn_prior=True``.
    log_noise_scale: :math:`\log \rho`, a scalar: the observation noise in
      use is :math:`\rho R`. Zero unless ``learn_noise_variance=True``.
    innovation_variance: the last step's innovation variance :math:`S`
      (for :math:`C` outputs, :math:`\mathrm{tr}(S)/C`); ``nan`` before the
      first update.
  """

  # The field shadows tuple.count, as in optax's own states (its name is
  # what inject_hyperparams and users look for).
  count: jax.Array  # type: ignore[assignment]
  means: tuple[optax.Params, ...]
  variances: tuple[optax.Params, ...]
  log_process_scale: jax.Array
  log_noise_scale: jax.Array
  innovation_variance: jax.Array


class BayesianSubweights(NamedTuple):
  r"""The belief of a Bayesian multiscale learner, as returned by
  :func:`get_bayesian_subweights`.

  Attributes:
    decays: :math:`\gamma_i`, one array per subweight (``None`` if not
      given).
    prior_mean: :math:`w_0`, the params minus :math:`\sum_i \mu_i`.
    means: :math:`\mu_i`, one params-shaped pytree per subweight.
    variances: :math:`v_i`, one params-shaped pytree per subweight.
    learning_rates: ``None`` unless ``decays`` was given; else
      :math:`\gamma_i v_i / S` with :math:`S` the last
      step's innovation variance, one params-shaped pytree per subweight:
      the gain of each subweight on the residual :math:`J e` at the next
      step if its innovation variance equals the last one (for scalar
      outputs; multiply by :math:`r` for the rate on the gradient).
    process_scale: :math:`c`, the learned scale of the process variances.
    noise_scale: :math:`\rho`, the learned scale of the noise variance.
  """

  decays: tuple[jax.Array, ...] | None
  prior_mean: optax.Params
  means: tuple[optax.Params, ...]
  variances: tuple[optax.Params, ...]
  learning_rates: tuple[optax.Params, ...] | None
  process_scale: jax.Array
  noise_scale: jax.Array


def _validate(
    decays: Any, process_variances: Any, noise_variance: Any,
    initial_variances: Any,
) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
  decay_entries, variance_entries = checks.decays_and_process_variances(
      decays, process_variances, lowest_decay=-1.0)
  checks.check_scalar(
      noise_variance, 'noise_variance', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
  if initial_variances is None:
    for index, decay in enumerate(decay_entries):
      if not checks.is_traced(decay) and decay == 1.0:
        raise ValueError(
            f'`initial_variances` must be given: `decays[{index}]` is 1 (a '
            'random walk), which has no stationary variance.')
    initial_entries = tuple(
        variance / (1.0 - decay * decay)
        for decay, variance in zip(decay_entries, variance_entries))
  else:
    initial_entries = checks.initial_variances(
        initial_variances, decay_entries)
  return decay_entries, variance_entries, initial_entries


def _total(values: Sequence[jax.Array]) -> jax.Array:
  return sum(values[1:], values[0])


def bayesian_multiscale(
    decays: Sequence[float] | ArrayLike,
    process_variances: Sequence[float] | ArrayLike,
    noise_variance: ArrayLike,
    *,
    initial_variances: Sequence[float] | ArrayLike | None = None,
    learn_prior: bool = False,
    learn_noise_variance: bool = False,
    prior_learning_rate: optax.ScalarOrSchedule = 0.01,
    state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Bayesian multiscale learner (a diagonal extended Kalman filter).

  Let :math:`\gamma_i` be ``decays[i]``, :math:`q_i` be
  ``process_variances[i]`` and :math:`r` be ``noise_variance``. Every weight
  is :math:`w = w_0 + \sum_i \omega_i` (:math:`w_0` the initial params, a
  fixed prior mean), every subweight an AR(1) process
  :math:`\omega_i \leftarrow \gamma_i \omega_i + \mathcal N(0, q_i)`, and the
  state holds a Gaussian belief :math:`\mathcal N(\mu_i, v_i)` per subweight
  of every weight. Each update observes one example (or a minibatch) and
  predicts ahead (module docstring for the derivation):

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
  scalar), and must be where ``learn_prior=True``.

  **Several outputs** (:math:`N` of them: a vector output, a minibatch of
  scalar outputs, or a minibatch of vectors flattened). Pass ``residual``
  of shape ``(N,)``, ``jacobian`` with leaves of shape
  ``(N, *param.shape)``, and optionally ``observation_covariance``
  :math:`R` of shape ``(N, N)`` (default :math:`rI`; block-diagonal for a
  minibatch). ``grads`` is then only used for its structure and dtype. The
  update is the joint one above with :math:`S` an :math:`N \times N`
  matrix (Cholesky-factored); it costs :math:`N^2` times the params per
  step, so for large :math:`N` scan over the examples instead (each a
  separate update, which also advances the prior by one step per example).
  :func:`gaussian_observation` and :func:`categorical_observation` compute
  these extra arguments for a model function.

  **Learning the prior** (``learn_prior=True``). A global scale :math:`c`
  of the process variances (and, with ``learn_noise_variance=True``, a
  scale :math:`\rho` of :math:`R`) is learned online by gradient ascent on
  the log predictive likelihood :math:`\log \mathcal N(e; 0, S)` of each
  observation, with step size :math:`\eta` = ``prior_learning_rate``:

  .. math::

    \log c \leftarrow \log c + \tfrac{\eta}{2}\big(a^\top (S - R) a
      - \mathrm{tr}(S^{-1}(S - R))\big), \qquad
    \log \rho \leftarrow \log \rho + \tfrac{\eta}{2}\big(a^\top R a
      - \mathrm{tr}(S^{-1} R)\big),

  :math:`a = S^{-1} e`; for one output these are
  :math:`\tfrac{\eta}{2}(e^2/S - 1)(S - R)/S` and
  :math:`\tfrac{\eta}{2}(e^2/S - 1)R/S`. The sensitivities
  :math:`\partial S/\partial \log c \approx S - R` and
  :math:`\partial S/\partial\log\rho = R` treat the predictive variances as
  proportional to :math:`c` (exact when the process noise dominates); the
  stationary point either way is a calibrated predictive variance,
  :math:`\mathbb E[e^2] = S`. The noise scale is identifiable from the
  process scale only where :math:`\|J\|` varies between examples.

  Args:
    decays: :math:`\gamma_i \in (-1, 1]`, one per subweight.
    process_variances: :math:`q_i \ge 0`, one per subweight (as in
      :func:`multiscale_optax.kalman_learning_rates`).
    noise_variance: :math:`r > 0`, the observation noise variance of a
      scalar output (the default :math:`R = rI`).
    initial_variances: :math:`v_i` for the first example; default the
      stationary :math:`q_i/(1 - \gamma_i^2)`, required where
      :math:`\gamma_i = 1`.
    learn_prior: learn the scale :math:`c` of the process variances online
      (above). Needs the ``residual`` extra argument.
    learn_noise_variance: also learn the scale :math:`\rho` of the
      observation noise (only with ``learn_prior=True``).
    prior_learning_rate: :math:`\eta > 0`, a scalar or an
      ``optax.Schedule`` of the step count.
    state_dtype: dtype of :math:`\mu_i` and :math:`v_i` (``None``: each
      param's dtype); arithmetic is in at least float32 and updates keep the
      incoming dtype.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`BayesianMultiscaleState`.

  Raises:
    TypeError: an argument has the wrong type.
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

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023. Jones, `Learning at Multiple
    Timescales <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022.
  """
  decay_entries, variance_entries, initial_entries = _validate(
      decays, process_variances, noise_variance, initial_variances)
  learn_prior = checks.check_bool(learn_prior, 'learn_prior')
  learn_noise_variance = checks.check_bool(
      learn_noise_variance, 'learn_noise_variance')
  if learn_noise_variance and not learn_prior:
    raise ValueError(
        '`learn_noise_variance=True` needs `learn_prior=True`.')
  if not callable(prior_learning_rate):
    checks.check_scalar(
        prior_learning_rate, 'prior_learning_rate', low=0.0, high=np.inf)
  checks.check_float_dtype(state_dtype, 'state_dtype')
  num = len(decay_entries)

  def init_fn(params: optax.Params) -> BayesianMultiscaleState:
    leaves = jax.tree.leaves(params)
    scalar_dtype = precision.compute_dtype(*(leaf.dtype for leaf in leaves))
    means = tuple(
        optax.tree.zeros_like(params, dtype=state_dtype) for _ in range(num))
    # full_like keeps each param's sharding, like zeros_like.
    variances = tuple(
        jax.tree.map(
            lambda param, value=value: jnp.full_like(
                param, value, dtype=state_dtype or param.dtype),
            params)
        for value in initial_entries)
    return BayesianMultiscaleState(
        count=jnp.zeros([], jnp.int32),
        means=means,
        variances=variances,
        log_process_scale=jnp.zeros([], scalar_dtype),
        log_noise_scale=jnp.zeros([], scalar_dtype),
        innovation_variance=jnp.full([], jnp.nan, scalar_dtype),
    )

  def update_fn(
      updates: optax.Updates,
      state: BayesianMultiscaleState,
      params: optax.Params | None = None,
      *,
      jacobian: optax.Params | None = None,
      residual: jax.Array | None = None,
      observation_covariance: jax.Array | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, BayesianMultiscaleState]:
    del params, extra_args
    if jacobian is None:
      raise ValueError(
          'bayesian_multiscale needs the extra argument `jacobian` '
          '(d prediction / d params), e.g. opt.update(grads, state, params, '
          'jacobian=J); see mso.gaussian_observation.')
    if len(state.means) != num:
      raise ValueError(
          f'The state was initialised for {len(state.means)} subweights, '
          f'but this transformation has {num}.')
    treedef: treedefs.TreeDef
    grad_leaves, treedef = jax.tree.flatten(updates)
    jacobian_leaves = treedef.flatten_up_to(jacobian)
    mean_leaves = [treedef.flatten_up_to(tree) for tree in state.means]
    variance_leaves = [treedef.flatten_up_to(tree) for tree in state.variances]
    dtype = precision.compute_dtype(
        *(leaf.dtype for leaf in grad_leaves),
        *(leaf.dtype for leaves in mean_leaves for leaf in leaves),
        *(leaf.dtype for leaves in variance_leaves for leaf in leaves),
        state.log_process_scale.dtype)
    residual_shape = () if residual is None else tuple(jnp.shape(residual))
    multi_output = len(residual_shape) >= 1
    if len(residual_shape) > 1:
      raise ValueError(
          '`residual` must be a scalar (one output) or of shape (N,) '
          f'(N outputs, flattened), got shape {residual_shape}.')
    for position, (grad, jac) in enumerate(zip(grad_leaves, jacobian_leaves)):
      expected = ((residual_shape[0], *grad.shape) if multi_output
                  else grad.shape)
      if tuple(jac.shape) != tuple(expected):
        raise ValueError(
            f'`jacobian` leaf {position} has shape {tuple(jac.shape)}, '
            f'expected {tuple(expected)} (the param\'s shape'
            + (', after the N outputs of `residual`)' if multi_output
               else '; pass `residual` of shape (N,) for N outputs)'))
    if learn_prior and residual is None:
      raise ValueError(
          '`learn_prior=True` needs the extra argument `residual` '
          '(y - prediction).')

    decays_c = [jnp.asarray(decay, dtype) for decay in decay_entries]
    process_c = [jnp.asarray(value, dtype) for value in variance_entries]
    noise = jnp.asarray(noise_variance, dtype)
    noise_scale = jnp.exp(state.log_noise_scale.astype(dtype))
    jacs = [jac.astype(dtype) for jac in jacobian_leaves]
    old_means = [[leaf.astype(dtype) for leaf in leaves]
                 for leaves in mean_leaves]
    old_vars = [[leaf.astype(dtype) for leaf in leaves]
                for leaves in variance_leaves]
    total_vars = [_total([old_vars[i][p] for i in range(num)])
                  for p in range(len(grad_leaves))]

    if not multi_output:
      observation = noise if observation_covariance is None else jnp.asarray(
          observation_covariance, dtype)
      observation = noise_scale * observation
      # One reduction over the whole network.
      explained = _total([jnp.sum(jnp.square(jac) * total)
                          for jac, total in zip(jacs, total_vars)])
      innovation = observation + explained
      if residual is None:
        weighted_residuals = [-noise * grad.astype(dtype)
                              for grad in grad_leaves]
      else:
        error = jnp.asarray(residual, dtype)
        weighted_residuals = [jac * error for jac in jacs]
      inverse = 1.0 / innovation
      mean_steps = [[v * (je * inverse) for v, je in zip(
          old_vars[i], weighted_residuals)] for i in range(num)]
      precision_diagonal = [jnp.square(jac) * inverse for jac in jacs]
      if learn_prior:
        normalised = jnp.square(error) * inverse
        process_gradient = 0.5 * (normalised - 1.0) * explained * inverse
        noise_gradient = 0.5 * (normalised - 1.0) * observation * inverse
      mean_innovation = innovation
    else:
      error = jnp.asarray(residual, dtype)
      outputs = error.shape[0]
      observation = (noise * jnp.eye(outputs, dtype=dtype)
                     if observation_covariance is None else jnp.asarray(
                         observation_covariance, dtype))
      if observation.shape != (outputs, outputs):
        raise ValueError(
            f'`observation_covariance` must have shape ({outputs}, '
            f'{outputs}), got {observation.shape}.')
      observation = noise_scale * observation
      flat_jacs = [jac.reshape(outputs, -1) for jac in jacs]
      explained = _total([
          (flat * total.reshape(1, -1)) @ flat.T
          for flat, total in zip(flat_jacs, total_vars)])
      explained = 0.5 * (explained + explained.T)
      innovation = observation + explained
      cholesky = jnp.linalg.cholesky(innovation)
      solved = jax.scipy.linalg.cho_solve((cholesky, True), error)
      weighted_residuals = [
          (solved @ flat).reshape(jac.shape[1:])
          for flat, jac in zip(flat_jacs, jacs)]
      mean_steps = [[v * je for v, je in zip(old_vars[i], weighted_residuals)]
                    for i in range(num)]
      precision_diagonal = []
      # L^{-1} J through the N x N inverse factor and a matmul: XLA:CPU's
      # triangular solve with a wide right-hand side (N x params) is far
      # slower than the matmul (measured ~300x at N = 10, 4096 params).
      inverse_cholesky = jax.scipy.linalg.solve_triangular(
          cholesky, jnp.eye(outputs, dtype=dtype), lower=True)
      for flat, jac in zip(flat_jacs, jacs):
        whitened = inverse_cholesky @ flat
        precision_diagonal.append(
            jnp.sum(jnp.square(whitened), axis=0).reshape(jac.shape[1:]))
      if learn_prior:
        inverse_observation = jax.scipy.linalg.cho_solve(
            (cholesky, True), observation)
        noise_trace = jnp.trace(inverse_observation)
        noise_quadratic = solved @ observation @ solved
        process_gradient = 0.5 * (
            solved @ explained @ solved - (outputs - noise_trace))
        noise_gradient = 0.5 * (noise_quadratic - noise_trace)
      mean_innovation = jnp.trace(innovation) / outputs

    log_process_scale = state.log_process_scale
    log_noise_scale = state.log_noise_scale
    if learn_prior:
      rate = (prior_learning_rate(state.count)
              if callable(prior_learning_rate) else prior_learning_rate)
      rate = jnp.asarray(rate, dtype)
      log_process_scale = (
          log_process_scale.astype(dtype) + rate * process_gradient).astype(
              state.log_process_scale.dtype)
      if learn_noise_variance:
        log_noise_scale = (
            log_noise_scale.astype(dtype) + rate * noise_gradient).astype(
                state.log_noise_scale.dtype)
    process_scale = jnp.exp(log_process_scale.astype(dtype))

    increments = []
    new_means: list[list[jax.Array]] = [[] for _ in range(num)]
    new_vars: list[list[jax.Array]] = [[] for _ in range(num)]
    for position, grad in enumerate(grad_leaves):
      increment = jnp.zeros(grad.shape, dtype)
      for i in range(num):
        mean = old_means[i][position]
        variance = old_vars[i][position]
        posterior_mean = mean + mean_steps[i][position]
        # v (1 - v J^2 / S) >= 0 in exact arithmetic (S > v J^2); the clamp
        # only removes negative rounding.
        posterior_var = jnp.maximum(
            variance * (1.0 - variance * precision_diagonal[position]), 0.0)
        stored_mean = precision.round_to_storage(
            decays_c[i] * posterior_mean, mean_leaves[i][position].dtype)
        stored_var = precision.round_to_storage(
            jnp.square(decays_c[i]) * posterior_var
            + process_scale * process_c[i],
            variance_leaves[i][position].dtype)
        increment = increment + (stored_mean.astype(dtype) - mean)
        new_means[i].append(stored_mean)
        new_vars[i].append(stored_var)
      increments.append(increment.astype(grad.dtype))
    new_state = BayesianMultiscaleState(
        count=jnp.asarray(optax.safe_increment(state.count)),
        means=tuple(treedef.unflatten(leaves) for leaves in new_means),
        variances=tuple(treedef.unflatten(leaves) for leaves in new_vars),
        log_process_scale=log_process_scale,
        log_noise_scale=log_noise_scale,
        innovation_variance=mean_innovation.astype(
            state.innovation_variance.dtype),
    )
    return treedef.unflatten(increments), new_state

  # optax's protocols take any OptState and no named extra arguments;
  # update_fn takes its own state and the observation's extra arguments.
  return optax.GradientTransformationExtraArgs(
      init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn))


def _find_state(opt_state: Any) -> BayesianMultiscaleState:
  found = [
      node for node in jax.tree.leaves(
          opt_state,
          is_leaf=lambda node: isinstance(node, BayesianMultiscaleState))
      if isinstance(node, BayesianMultiscaleState)
  ]
  if len(found) != 1:
    raise ValueError(
        '`opt_state` must contain exactly one BayesianMultiscaleState, found '
        f'{len(found)}.')
  return found[0]


def get_bayesian_subweights(
    params: optax.Params,
    opt_state: optax.OptState,
    decays: Sequence[float] | ArrayLike | None = None,
) -> BayesianSubweights:
  r"""The belief of a running Bayesian multiscale learner, for plotting.

  Reads :math:`\mu_i` and :math:`v_i` from the state, the prior mean
  :math:`w_0 = w - \sum_i \mu_i` from the params, and forms the learning
  rates :math:`\gamma_i v_i / S` with the last innovation variance
  :math:`S`.

  Args:
    params: the current params.
    opt_state: the state of :func:`bayesian_multiscale`, or of an optax
      chain (or ``inject_hyperparams`` wrapper) holding exactly one
      :class:`BayesianMultiscaleState`.
    decays: the decays the learner was built with (the state does not keep
      hyperparameters); needed only for ``learning_rates``.

  Returns:
    A :class:`BayesianSubweights`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> opt = mso.bayesian_multiscale([0.5, 0.9], [0.75, 0.19], 1.0)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> belief = mso.get_bayesian_subweights(params, state, [0.5, 0.9])
    >>> print(belief.variances[0], belief.variances[1])
    [1. 1.] [1. 1.]

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023.
  """
  state = _find_state(opt_state)
  if decays is None:
    decay_entries = None
  else:
    decay_entries = checks.vector_entries(decays, 'decays')
  if decay_entries is not None and len(decay_entries) != len(state.means):
    raise ValueError(
        f'`decays` has {len(decay_entries)} entries but the state holds '
        f'{len(state.means)} subweights.')

  def prior_part(param: jax.Array, *means: jax.Array) -> jax.Array:
    dtype = precision.compute_dtype(param.dtype, *(m.dtype for m in means))
    total = param.astype(dtype)
    for mean in means:
      total = total - mean.astype(dtype)
    return total.astype(param.dtype)

  prior_mean = jax.tree.map(prior_part, params, *state.means)
  innovation = state.innovation_variance
  rates = None if decay_entries is None else tuple(
      jax.tree.map(
          lambda v, decay=decay: (
              decay * v.astype(innovation.dtype) / innovation).astype(
                  v.dtype), variances)
      for decay, variances in zip(decay_entries, state.variances))
  return BayesianSubweights(
      decays=None if decay_entries is None else tuple(
          jnp.asarray(decay) for decay in decay_entries),
      prior_mean=prior_mean,
      means=state.means,
      variances=state.variances,
      learning_rates=rates,
      process_scale=jnp.exp(state.log_process_scale),
      noise_scale=jnp.exp(state.log_noise_scale),
  )
