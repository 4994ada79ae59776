r"""Observation models for the Bayesian multiscale learner.

:func:`multiscale_optax.bayesian_multiscale` is an extended Kalman filter: it
needs, for each observation, the Jacobian :math:`H` of the predicted mean of
:math:`y` with respect to the params, the residual :math:`e = y - \mathbb
E[y]` and the observation covariance :math:`R`. The helpers here compute them
for a model function, for Gaussian regression and for softmax classification,
in the form ``opt.update(grads, state, params, **extra)`` takes.

Softmax classification follows the generalised-Gauss-Newton form of the EKF
(Ollivier, "Online natural gradient as a Kalman filter", Electronic Journal of
Statistics, 2018; Chang, Durán-Martín, Shestopaloff, Jones & Murphy,
"Low-rank extended Kalman filtering for online learning of neural networks
from streaming data" (LO-FI), CoLLAs 2023): the observation is the one-hot
label :math:`y`, its predicted mean :math:`p = \mathrm{softmax}(f(w))`, so
:math:`H = (\mathrm{diag}(p) - pp^\top) J_f`, :math:`e = y - p` and
:math:`R = \mathrm{diag}(p) - pp^\top + \epsilon I`, the label's covariance
under the model. With :math:`R` equal to the label covariance, the EKF's
information update :math:`H^\top R^{-1} H` is the Fisher matrix and
:math:`H^\top R^{-1} e` the log-likelihood gradient (Ollivier 2018), so the
filter is online natural gradient.

Why :math:`\epsilon`: :math:`\mathrm{diag}(p) - pp^\top` is singular (the
all-ones vector is in its null space, because probabilities sum to one), and
so is :math:`H V H^\top` for the same reason, so :math:`S` would be
singular. Both map :math:`\mathbf 1` to zero and are symmetric, so
:math:`\mathbf 1` is an eigenvector of :math:`S` with eigenvalue
:math:`\epsilon` and its orthogonal complement is invariant; :math:`e` and
every row of :math:`H^\top` are orthogonal to :math:`\mathbf 1`, so the
update does not depend on :math:`\epsilon` through that direction at all.
Elsewhere :math:`\epsilon` is a floor on the noise of each class: a class of
probability :math:`p_c \ll \epsilon` that occurs gets a step shrunk by
:math:`p_c/(p_c + \epsilon)` instead of the full natural-gradient step, a
guard against the linearisation of the softmax, which is poor there. It also
keeps every eigenvalue of :math:`S` at least :math:`\epsilon`, so its
Cholesky factorisation is well defined in float32.

Two cheaper observation models are available:
``fisher='sampled'`` (rows from labels drawn from the model, a Monte-Carlo
Fisher, and one row that carries the observed labels' gradient, so that the
mean takes the step of Jones, Chang & Murphy, "Bayesian online natural
gradient (BONG)", NeurIPS 2024) and
``fisher='empirical'`` (the observed label's gradient; Kunstner, Balles &
Hennig, "Limitations of the empirical Fisher approximation for natural
gradient descent", NeurIPS 2019, on its bias); for regression,
``fisher='sampled'`` observes random projections of the outputs. The docs
page *Observation models* derives them and compares their costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from multiscale_optax._src import checks
from multiscale_optax._src import gaussian_belief
from multiscale_optax._src import precision

# The params as the model takes them (e.g. a dict of arrays); the gradient
# returned has the same type.
ParamsT = TypeVar('ParamsT', bound=optax.Params)

# Smallest allowed `epsilon` of categorical_observation, in machine epsilons
# of the dtype R is computed in (2**7 * 2**-23 ~ 1.5e-5 in float32). Below
# it, rounding alone (of p - p^2 near p = 1 here, of J V J^T in the filter)
# moves the eigenvalue of S along the all-ones direction, which is epsilon
# in exact arithmetic, below zero: in float32 with saturated logits (+-50)
# epsilon = 1e-7 gave NaN updates in 1 of 20 draws and 1e-9 in 17 of 20.
_EPSILON_FLOOR_ULPS = 128


class ObservationInfo(NamedTuple):
  """What an observation helper saw, besides the update's inputs.

  Attributes:
    loss: the negative log-likelihood of the observation (summed over
      outputs and examples), at the params given, i.e. before the update:
      the online (progressive-validation) loss.
    predictions: the predicted mean of :math:`y`: the model's outputs for
      :func:`gaussian_observation`, class probabilities for
      :func:`categorical_observation`.
  """

  loss: jax.Array
  predictions: jax.Array


def _check_fisher(fisher: Any, allowed: tuple[str, ...]) -> None:
  if not isinstance(fisher, str):
    raise TypeError(
        f'`fisher` must be one of {", ".join(map(repr, allowed))}, got '
        f'{type(fisher).__name__} {fisher!r}.')
  if fisher not in allowed:
    raise ValueError(
        f'`fisher` must be one of {", ".join(map(repr, allowed))}, got '
        f'{fisher!r}.')


def _check_key(key: jax.Array | None, fisher: str) -> None:
  if fisher == 'sampled' and key is None:
    raise ValueError(
        "`fisher='sampled'` needs `key` (a jax.random key) to draw the "
        'sampled observations; pass e.g. key=jax.random.key(0), split per '
        'step.')


def _epsilon_floor(dtype: Any) -> float:
  """The smallest ``epsilon`` of ``categorical_observation`` for ``dtype``.

  In exact arithmetic the filter's S has eigenvalue epsilon along the
  all-ones direction of each example; in floating point that eigenvalue is
  off by about u * lambda_max(H V H^T) (u the unit roundoff), so epsilon
  must exceed it for the Cholesky factorisation of S to exist.
  """
  resolved = precision.compute_dtype(dtype)
  return float(_EPSILON_FLOOR_ULPS * jnp.finfo(resolved).eps)


def _unit_rows(count: int, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  return jnp.eye(count, dtype=dtype).reshape((count, *shape))


def gaussian_observation(
    apply_fn: Callable[[ParamsT, Any], jax.Array],
    params: ParamsT,
    inputs: Any,
    targets: ArrayLike,
    noise_variance: ArrayLike,
    *,
    fisher: Literal['exact', 'sampled'] = 'exact',
    key: jax.Array | None = None,
    projections: int = 1,
) -> tuple[ObservationInfo, ParamsT, dict[str, Any]]:
  r"""Extra arguments of the Bayesian multiscale update for regression.

  The model is :math:`y = f(w, x) + v`, :math:`v \sim \mathcal N(0, rI)`
  with :math:`f` = ``apply_fn`` and :math:`r` = ``noise_variance``. For a
  scalar target the extra arguments are the params-shaped Jacobian
  :math:`J = \partial f/\partial w`, the residual :math:`e = y - f` and
  :math:`R = r`; for :math:`N` targets (a vector, or a minibatch: any
  shape) they are the Jacobian with leaves of shape ``(N, *param.shape)``
  (rows in the order of ``targets.ravel()``), :math:`e` of shape ``(N,)``
  and :math:`R = rI_N`. ``grads`` is the gradient of the negative
  log-likelihood :math:`\sum (y - f)^2/(2r)`.

  With ``fisher='sampled'`` the :math:`N` outputs are replaced by
  :math:`K` = ``projections`` random combinations of them. Let
  :math:`\Omega` be :math:`K \times N` with independent entries
  :math:`\pm 1/\sqrt K` (Rademacher); the extra arguments are

  .. math::

    H = \Omega J, \qquad e' = \Omega (y - f), \qquad R' = r I_K,

  so that :math:`\mathbb E_\Omega[H^\top R'^{-1} H] = J^\top J / r` (the
  Fisher matrix) and :math:`\mathbb E_\Omega[H^\top R'^{-1} e'] = J^\top
  (y - f)/r` (the log-likelihood gradient): a Monte-Carlo Fisher, as for
  :func:`categorical_observation`. It costs :math:`K` backward passes and a
  :math:`K \times K` solve in the update instead of :math:`N` and
  :math:`N \times N`, so it pays for many outputs (:math:`K \ll N`); it
  applies to this isotropic noise :math:`rI`. Under the model the noise
  part of :math:`e'` has variance :math:`rN/K` per entry, not :math:`r`:
  with ``learn_prior=True`` the learned scales absorb that factor.

  Args:
    apply_fn: ``apply_fn(params, inputs)`` returns predictions of the same
      shape as ``targets``.
    params: the params at which to predict.
    inputs: passed to ``apply_fn``.
    targets: :math:`y`.
    noise_variance: :math:`r > 0`.
    fisher: ``'exact'`` (all :math:`N` outputs) or ``'sampled'``
      (:math:`K` random projections of them).
    key: a ``jax.random`` key, required with ``fisher='sampled'`` (draws
      :math:`\Omega`); ignored otherwise.
    projections: :math:`K \ge 1`, the number of random projections with
      ``fisher='sampled'``.

  Returns:
    ``(info, grads, extra)``: an :class:`ObservationInfo` (loss and
    predictions), the gradient of the negative log-likelihood, and the
    dict of extra arguments for ``opt.update(grads, state, params,
    **extra)``. Computing the Jacobian costs :math:`N` backward passes
    (vectorised with ``jax.vmap``), or :math:`K` with ``'sampled'``.

  Raises:
    TypeError: ``fisher`` is not a string, or ``projections`` not an int.
    ValueError: ``noise_variance`` is not positive and finite, ``fisher``
      is not ``'exact'`` or ``'sampled'``, ``key`` is missing for
      ``'sampled'``, ``projections < 1``, or the predictions' shape differs
      from the targets'.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> def apply_fn(params, x):
    ...   return x @ params['w']
    >>> opt = mso.bayesian_multiscale([0.9, 0.99], [0.1, 0.01], 1.0)
    >>> params = {'w': jnp.zeros(3)}
    >>> state = opt.init(params)
    >>> info, grads, extra = mso.gaussian_observation(
    ...     apply_fn, params, jnp.ones(3), jnp.asarray(1.0), 1.0)
    >>> updates, state = opt.update(grads, state, params, **extra)
    >>> params = optax.apply_updates(params, updates)
    >>> print(float(info.loss), sorted(extra))
    0.5 ['jacobian', 'observation_covariance', 'residual']
    >>> _, _, sketch = mso.gaussian_observation(
    ...     apply_fn, params, jnp.ones((50, 3)), jnp.ones(50), 1.0,
    ...     fisher='sampled', key=jax.random.key(0), projections=4)
    >>> print(sketch['jacobian']['w'].shape, sketch['residual'].shape)
    (4, 3) (4,)

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023. Jones, Chang & Murphy, "Bayesian
    online natural gradient (BONG)", NeurIPS 2024. Woodruff, "Sketching as
    a tool for numerical linear algebra", Foundations and Trends in
    Theoretical Computer Science, 2014.
  """
  checks.check_scalar(
      noise_variance, 'noise_variance', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
  _check_fisher(fisher, ('exact', 'sampled'))
  _check_key(key, fisher)
  projections = checks.check_integer(projections, 'projections', low=1)
  targets = jnp.asarray(targets)
  predictions, pullback = jax.vjp(lambda p: apply_fn(p, inputs), params)
  if predictions.shape != targets.shape:
    raise ValueError(
        f'`apply_fn(params, inputs)` returned shape {predictions.shape}, but '
        f'`targets` has shape {targets.shape}; they must match.')
  residual = (targets - predictions).astype(predictions.dtype)
  noise = jnp.asarray(noise_variance, predictions.dtype)
  (grads,) = pullback(-residual / noise)
  loss = 0.5 * jnp.sum(jnp.square(residual)) / noise
  info = ObservationInfo(loss=loss, predictions=predictions)
  count = residual.size
  if fisher == 'sampled':
    # Omega: K x N, entries +-1/sqrt(K), so that E[Omega^T Omega] = I_N.
    assert key is not None  # _check_key
    directions = jax.random.rademacher(
        key, (projections, count), dtype=predictions.dtype) / np.sqrt(
            projections)
    (rows,) = jax.vmap(pullback)(
        directions.reshape((projections, *predictions.shape)))
    return info, grads, {
        'jacobian': rows,
        'residual': directions @ residual.reshape(count),
        'observation_covariance': noise * jnp.eye(
            projections, dtype=noise.dtype)}
  (rows,) = jax.vmap(pullback)(
      _unit_rows(count, predictions.shape, predictions.dtype))
  if residual.ndim == 0:
    jacobian = jax.tree.map(lambda row: row[0], rows)
    return info, grads, {
        'jacobian': jacobian, 'residual': residual,
        'observation_covariance': noise}
  return info, grads, {
      'jacobian': rows,
      'residual': residual.reshape(count),
      'observation_covariance': noise * jnp.eye(count, dtype=noise.dtype)}


def _check_labels(labels: jax.Array, classes: int) -> None:
  if checks.is_traced(labels) or labels.size == 0:
    return
  values = np.asarray(labels)
  bad = values[(values < 0) | (values >= classes)]
  if bad.size:
    raise ValueError(
        f'`labels` must lie in [0, {classes}) (the {classes} classes of the '
        f'logits), got {bad.ravel()[:5].tolist()}'
        + (' among others.' if bad.size > 5 else '.'))


def _example_inputs(inputs: Any, batch_shape: tuple[int, ...]) -> Any:
  """``inputs`` with its examples on one leading axis, or ``None`` where a
  leaf does not lead with the batch shape (or there is one example: then
  the batch's own pullback is the example's, with no second forward
  pass)."""
  leaves = jax.tree.leaves(inputs)
  count = len(batch_shape)
  examples = int(np.prod(batch_shape))
  if examples <= 1 or not leaves or any(
      tuple(np.shape(leaf))[:count] != batch_shape for leaf in leaves):
    return None
  return jax.tree.map(
      lambda leaf: jnp.reshape(leaf, (examples, *np.shape(leaf)[count:])),
      inputs)


def _row_puller(
    apply_fn: Callable[..., jax.Array], params: ParamsT, inputs: Any,
    logits_pullback: Callable[[jax.Array], tuple[ParamsT]],
    batch_shape: tuple[int, ...], dtype: Any,
) -> Callable[[jax.Array], ParamsT]:
  r"""The rows of an observation: ``(B, K, C)`` cotangents (:math:`B`
  examples, :math:`K` rows each, :math:`C` classes) to the rows
  ``(B K, *param.shape)``, in that order; row :math:`(n, j)` pulls back
  example :math:`n`'s cotangent :math:`j` through that example alone.

  Where the inputs split into examples (:func:`_example_inputs`), the
  model's pullback at one example is vmapped over the examples: a row
  costs a backward pass of one example, so :math:`BK` rows cost about
  :math:`K` backward passes of the batch. Otherwise every row is a
  backward pass of the whole batch (``logits_pullback``) with the other
  examples' cotangents zero (:math:`B` times the work).
  """
  examples = _example_inputs(inputs, batch_shape)
  ones = (1,) * len(batch_shape)

  def through_one(example: Any, cotangents: jax.Array) -> ParamsT:
    single = jax.tree.map(lambda leaf: jnp.reshape(
        leaf, (*ones, *jnp.shape(leaf))), example)
    _, pullback = jax.vjp(lambda p: apply_fn(p, single), params)
    return jax.vmap(lambda cotangent: pullback(cotangent.reshape(
        (*ones, -1)))[0])(cotangents)

  def rows_of(cotangents: jax.Array) -> ParamsT:
    count, per_example, classes = cotangents.shape
    cotangents = cotangents.astype(dtype)
    if examples is not None:
      rows = jax.vmap(through_one)(examples, cotangents)
    else:
      selectors = _unit_rows(count, batch_shape, dtype)[:, None, ..., None]
      spread = selectors * cotangents.reshape(
          count, per_example, *ones, classes)
      (rows,) = jax.vmap(jax.vmap(logits_pullback))(spread)
    return jax.tree.map(lambda leaf: leaf.reshape(
        (count * per_example, *leaf.shape[2:])), rows)

  return rows_of


def _exact_extra(
    rows_of: Callable[[jax.Array], Any], logits: jax.Array,
    probabilities: jax.Array, onehot: jax.Array, valid: jax.Array,
    epsilon: Any, dtype: Any,
) -> dict[str, Any]:
  """``fisher='exact'``: every class's row (see
  :func:`categorical_observation`)."""
  classes = logits.shape[-1]
  examples = valid.size
  flat = probabilities.reshape(-1, classes)
  # Row (n, c) of H pulls back (diag(p_n) - p_n p_n^T) e_c through example
  # n's logits.
  blocks = jax.vmap(jnp.diag)(flat) - flat[:, :, None] * flat[:, None, :]
  rows = rows_of(blocks)
  residual = jnp.where(
      valid[..., None], onehot - probabilities, jnp.nan).reshape(-1)
  blocks = blocks + epsilon * jnp.eye(classes, dtype=flat.dtype)
  covariance = jnp.einsum(
      'bij,bd->bidj', blocks, jnp.eye(examples, dtype=flat.dtype)).reshape(
          examples * classes, examples * classes)
  return {
      'jacobian': rows, 'residual': residual,
      'observation_covariance': covariance}


def _sampled_extra(
    rows_of: Callable[[jax.Array], Any], logits: jax.Array,
    wide_logits: jax.Array, probabilities: jax.Array, grads: Any,
    valid: jax.Array, key: jax.Array, samples: int, empirical_weight: Any,
    dtype: Any,
) -> dict[str, Any]:
  """``fisher='sampled'``: BONG's pseudo-observation (see
  :func:`categorical_observation`)."""
  classes = logits.shape[-1]
  labels_shape = valid.shape
  examples = valid.size
  # M labels per example drawn from the model's predictive, examples
  # first: drawn[m, *batch].
  drawn = jax.random.categorical(
      key, wide_logits, axis=-1, shape=(samples, *labels_shape))
  scores = jax.nn.one_hot(drawn, classes, dtype=dtype) - probabilities
  scores = jnp.where(valid[..., None], scores, 0.0)
  # One backward pass per drawn label: row (n, m) is g_{n m}.
  sampled_rows = rows_of(
      jnp.moveaxis(scores.reshape(samples, examples, classes), 0, 1))
  weight = jnp.asarray(empirical_weight, dtype)
  sampled_scale = jnp.sqrt((1.0 - weight) / samples)
  observed_scale = jnp.sqrt(weight)

  def stack(gradient: jax.Array, rows: jax.Array) -> jax.Array:
    # Row 0 is sqrt(delta) grad log p(y) = -sqrt(delta) grads.
    return jnp.concatenate([
        (-observed_scale * gradient.astype(dtype))[None],
        sampled_scale * rows.astype(dtype)]).astype(rows.dtype)

  jacobian = jax.tree.map(stack, grads, sampled_rows)
  residual = jnp.concatenate([
      jnp.where(jnp.all(valid), 1.0 / observed_scale, jnp.nan)[None],
      jnp.zeros(examples * samples, dtype)])
  count = 1 + examples * samples
  return {
      'jacobian': jacobian, 'residual': residual.astype(dtype),
      'observation_covariance': jnp.eye(count, dtype=dtype),
      'pseudo_residual': gaussian_belief.PseudoResidual()}


def categorical_observation(
    apply_fn: Callable[[ParamsT, Any], jax.Array],
    params: ParamsT,
    inputs: Any,
    labels: ArrayLike,
    *,
    epsilon: float = 1e-3,
    fisher: Literal['exact', 'sampled', 'empirical'] = 'exact',
    key: jax.Array | None = None,
    samples: int = 1,
    empirical_weight: float = 1e-3,
) -> tuple[ObservationInfo, ParamsT, dict[str, Any]]:
  r"""Extra arguments of the Bayesian multiscale update for classification.

  ``apply_fn(params, inputs)`` returns logits :math:`f` of shape
  ``(*batch, C)`` and ``labels`` are integer classes of shape ``batch``
  (``()`` for one example), :math:`B` examples in all. Let
  :math:`p = \mathrm{softmax}(f)`, :math:`y` the one-hot labels and
  :math:`J = \partial f/\partial w`. ``grads`` is the gradient of the
  cross-entropy :math:`-\sum \log p_y` in every mode.

  Every row of the observation belongs to one example. Where every leaf of
  ``inputs`` leads with ``labels.shape`` (a batch of examples), a row is
  pulled back through its example alone (``apply_fn`` on a batch of one,
  vmapped over the examples), so :math:`K` rows per example cost about
  :math:`K` backward passes of the batch; otherwise each row is a
  backward pass of the whole batch with the other examples' cotangents
  zero, :math:`B` times the work. The two agree wherever the examples do
  not interact in ``apply_fn`` (no batch statistics).

  ``fisher='exact'`` (default): the EKF's generalised Gauss–Newton form
  (module docstring), over the :math:`N = BC` outputs (:math:`R`
  block-diagonal over the examples; :math:`C` rows per example):

  .. math::

    H = \frac{\partial p}{\partial w}
      = (\mathrm{diag}(p) - pp^\top)\, J, \qquad
    e = y - p, \qquad
    R = \mathrm{diag}(p) - pp^\top + \epsilon I.

  ``fisher='sampled'`` (Bayesian online natural gradient with a
  Monte-Carlo Fisher, Jones, Chang & Murphy 2024): draw :math:`M` =
  ``samples`` labels :math:`\hat y_{nm} \sim \mathrm{Categorical}(p_n)` per
  example with ``key``, let :math:`g_{nm} = \nabla_w \log p_n(\hat y_{nm})
  = J_n^\top(e_{\hat y_{nm}} - p_n)` and :math:`g = \sum_n \nabla_w \log
  p_n(y_n) = -` ``grads``, and let :math:`\delta` be ``empirical_weight``.
  The pseudo-observation has :math:`N = 1 + BM` rows (:math:`M` rows per
  example besides the one of ``grads``, an :math:`N \times N` solve):

  .. math::

    H = \begin{pmatrix} \sqrt{\delta}\, g^\top \\
      \sqrt{(1 - \delta)/M}\; g_{nm}^\top \end{pmatrix}, \qquad
    e = \begin{pmatrix} 1/\sqrt{\delta} \\ 0 \end{pmatrix}, \qquad
    R = I_N.

  Its information :math:`H^\top H = \delta g g^\top + \frac{1 - \delta}{M}
  \sum_{nm} g_{nm} g_{nm}^\top` has expectation the Fisher
  :math:`\sum_n J_n^\top(\mathrm{diag}(p_n) - p_n p_n^\top) J_n` (the
  drawn part because :math:`\mathbb E_{\hat y}[g g^\top]` is the Fisher,
  the observed part when the labels follow the model), and
  :math:`H^\top R^{-1} e = g` exactly, so the Kalman update moves the mean
  by :math:`\Sigma' g` with :math:`\Sigma'^{-1} = \Sigma^{-1} + H^\top H`:
  a natural-gradient step along the *observed* labels' log-likelihood
  gradient, preconditioned by the posterior covariance. As
  :math:`\delta \to 0` it is BONG's update with the sampled Fisher; the
  observed row only carries the gradient (its information is
  :math:`\delta g g^\top`, and the default :math:`\delta = 10^{-3}` keeps
  it finite). The residual is not a residual of the data: it is
  incompatible with ``learn_prior=True`` (the learned scale would read
  :math:`e_0^2 = 1/\delta` as surprise) and with ``outlier_threshold``
  (it would be shrunk); use ``'exact'`` there. The extra arguments carry
  ``pseudo_residual`` (a marker that ``jax.jit`` passes as structure), on
  which :func:`bayesian_multiscale` refuses
  those options.

  ``fisher='empirical'``: :math:`H_n = \nabla_w \log p_n(y_n)^\top`, the
  observed label's gradient, :math:`e_n = 1`, :math:`R = I_B`
  (one row per example): :math:`H^\top R^{-1} e` is exactly the
  log-likelihood gradient, but :math:`H^\top R^{-1} H` is the empirical
  Fisher, which is not the Fisher: it vanishes on examples the model
  already fits and is large where it errs, so it can distort the step
  (Kunstner, Balles & Hennig 2019). Its residual is constant, not a
  prediction error (``learn_prior=True`` would drive the process scale
  down), so it too carries ``pseudo_residual``.

  Labels outside :math:`[0, C)` are refused where they are concrete
  (``ValueError``). Traced labels (under ``jax.jit`` or ``jax.vmap``)
  cannot be checked: there an out-of-range label has an all-zero one-hot,
  and its example gets a NaN residual (all its :math:`C` entries with
  ``'exact'``; with ``'sampled'`` the observed row's, which serves the
  whole batch), a NaN loss, and no contribution to ``grads`` or to the
  sampled or empirical rows. The filter's guard against non-finite
  observations (in :func:`multiscale_optax.bayesian_multiscale`) then
  skips it instead of learning from a label that is not there.

  Args:
    apply_fn: ``apply_fn(params, inputs)`` returns logits of shape
      ``(*labels.shape, C)``.
    params: the params at which to predict.
    inputs: passed to ``apply_fn``.
    labels: integer class labels in :math:`[0, C)`.
    epsilon: :math:`\epsilon`, the noise floor of ``'exact'`` (module
      docstring: it makes :math:`S` invertible without changing the update
      along the all-ones direction, and damps steps on classes with
      :math:`p_c \ll \epsilon`); at least 128 machine epsilons of the
      logits' dtype (at least float32): :math:`1.53 \times 10^{-5}` in
      float32, :math:`2.8 \times 10^{-14}` in float64, which
      keeps the update finite while :math:`\lambda_{\max}(H V H^\top)`
      stays below about :math:`\epsilon/(4u)` (:math:`u` the unit
      roundoff; about 4000 at the default, 64 at the floor, in float32;
      measured NaNs begin near :math:`\epsilon/(2u)`). Checked, unused
      otherwise.
    fisher: ``'exact'``, ``'sampled'`` or ``'empirical'`` (above).
    key: a ``jax.random`` key, required with ``fisher='sampled'`` (draws
      :math:`\hat y`); ignored otherwise.
    samples: :math:`M \ge 1`, labels drawn per example with
      ``fisher='sampled'`` (it sets the shapes: a Python int).
    empirical_weight: :math:`\delta \in (0, 1)`, the share of the observed
      gradient's outer product in the information of ``fisher='sampled'``
      (above); checked, unused otherwise.

  Returns:
    ``(info, grads, extra)``: an :class:`ObservationInfo` (cross-entropy
    and class probabilities), the cross-entropy's gradient, and the dict
    of extra arguments for ``opt.update(grads, state, params, **extra)``.

  Raises:
    TypeError: ``labels`` are not integers, ``fisher`` is not a string or
      ``samples`` not an int.
    ValueError: ``epsilon`` lies below its floor (``epsilon`` above) or is
      not finite, ``fisher`` is not one of the three, ``key`` is missing for
      ``'sampled'``, ``samples < 1``, ``empirical_weight`` lies outside
      :math:`(0, 1)`, a concrete label lies outside :math:`[0, C)`, or the
      logits' shape is not ``(*labels.shape, C)``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> def apply_fn(params, x):
    ...   return x @ params['w']
    >>> opt = mso.bayesian_multiscale([0.99], [0.01], 1.0)
    >>> params = {'w': jnp.zeros((4, 3))}
    >>> state = opt.init(params)
    >>> info, grads, extra = mso.categorical_observation(
    ...     apply_fn, params, jnp.ones(4), jnp.asarray(2))
    >>> updates, state = opt.update(grads, state, params, **extra)
    >>> params = optax.apply_updates(params, updates)
    >>> print(extra['jacobian']['w'].shape, extra['residual'].shape)
    (3, 4, 3) (3,)
    >>> _, _, sampled = mso.categorical_observation(
    ...     apply_fn, params, jnp.ones((5, 4)), jnp.arange(5) % 3,
    ...     fisher='sampled', key=jax.random.key(0))
    >>> print(sampled['jacobian']['w'].shape, sampled['residual'].shape)
    (6, 4, 3) (6,)

  References:
    Ollivier, "Online natural gradient as a Kalman filter", Electronic
    Journal of Statistics, 2018. Chang et al., "Low-rank extended Kalman
    filtering for online learning of neural networks from streaming data",
    CoLLAs 2023. Jones, Chang & Murphy, "Bayesian online natural gradient
    (BONG)", NeurIPS 2024. Kunstner, Balles & Hennig, "Limitations of the
    empirical Fisher approximation for natural gradient descent", NeurIPS
    2019.
  """
  checks.check_scalar(
      epsilon, 'epsilon', low=0.0, high=np.inf, low_inclusive=False,
      high_inclusive=False)
  _check_fisher(fisher, ('exact', 'sampled', 'empirical'))
  _check_key(key, fisher)
  samples = checks.check_integer(samples, 'samples', low=1)
  checks.check_scalar(
      empirical_weight, 'empirical_weight', low=0.0, high=1.0,
      low_inclusive=False, high_inclusive=False)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f'`labels` must hold integer classes, got dtype {labels.dtype}.')
  logits, logits_pullback = jax.vjp(lambda p: apply_fn(p, inputs), params)
  if logits.shape[:-1] != labels.shape or logits.ndim == 0:
    raise ValueError(
        f'`apply_fn(params, inputs)` returned shape {logits.shape}; expected '
        f'(*labels.shape, C) = ({", ".join(map(str, labels.shape))}'
        f'{", " if labels.shape else ""}C).')
  classes = logits.shape[-1]
  _check_labels(labels, classes)
  floor = _epsilon_floor(logits.dtype)
  if not checks.is_traced(epsilon) and float(epsilon) < floor:
    raise ValueError(
        f'`epsilon` must lie in [{floor:.3g}, inf) for {logits.dtype} '
        f'logits (128 machine epsilons: below it rounding makes S '
        f'indefinite and the update NaN), got {float(epsilon)}.')
  dtype = precision.compute_dtype(logits.dtype)
  wide_logits = logits.astype(dtype)
  probabilities = jax.nn.softmax(wide_logits, axis=-1)
  log_probabilities = jax.nn.log_softmax(wide_logits, axis=-1)
  valid = (labels >= 0) & (labels < classes)
  onehot = jax.nn.one_hot(labels, classes, dtype=probabilities.dtype)
  # An invalid (traced) label has an all-zero one-hot: its NLL is NaN.
  loss = -jnp.sum(onehot * log_probabilities) + jnp.where(
      jnp.all(valid), 0.0, jnp.nan).astype(dtype)
  observed_scores = jnp.where(valid[..., None], onehot - probabilities, 0.0)
  (grads,) = logits_pullback((-observed_scores).astype(logits.dtype))
  info = ObservationInfo(loss=loss, predictions=probabilities)
  examples = labels.size

  rows_of = _row_puller(apply_fn, params, inputs, logits_pullback,
                        labels.shape, logits.dtype)
  if fisher == 'exact':
    return info, grads, _exact_extra(
        rows_of, logits, probabilities, onehot, valid, epsilon, dtype)
  if fisher == 'sampled':
    assert key is not None  # _check_key
    return info, grads, _sampled_extra(
        rows_of, logits, wide_logits, probabilities, grads, valid, key,
        samples, empirical_weight, dtype)
  rows = rows_of(observed_scores.reshape(examples, 1, classes))
  residual = jnp.where(valid, 1.0, jnp.nan).reshape(examples)
  return info, grads, {
      'jacobian': rows, 'residual': residual.astype(dtype),
      'observation_covariance': jnp.eye(examples, dtype=dtype),
      'pseudo_residual': gaussian_belief.PseudoResidual()}
