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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from multiscale_optax._src import checks

# The params as the model takes them (e.g. a dict of arrays); the gradient
# returned has the same type.
ParamsT = TypeVar('ParamsT', bound=optax.Params)


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


def _jacobian_rows(
    function: Callable[[ParamsT], jax.Array], params: ParamsT,
) -> tuple[jax.Array, Callable[[jax.Array], tuple[ParamsT]], Any]:
  outputs, pullback = jax.vjp(function, params)
  count = int(np.prod(outputs.shape))
  basis = jnp.eye(count, dtype=outputs.dtype).reshape(
      (count, *outputs.shape))
  (rows,) = jax.vmap(pullback)(basis)
  return outputs, pullback, rows


def gaussian_observation(
    apply_fn: Callable[[ParamsT, Any], jax.Array],
    params: ParamsT,
    inputs: Any,
    targets: ArrayLike,
    noise_variance: ArrayLike,
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

  Args:
    apply_fn: ``apply_fn(params, inputs)`` returns predictions of the same
      shape as ``targets``.
    params: the params at which to predict.
    inputs: passed to ``apply_fn``.
    targets: :math:`y`.
    noise_variance: :math:`r > 0`.

  Returns:
    ``(info, grads, extra)``: an :class:`ObservationInfo` (loss and
    predictions), the gradient of the negative log-likelihood, and the
    dict of extra arguments for ``opt.update(grads, state, params,
    **extra)``. Computing the Jacobian costs :math:`N` backward passes
    (vectorised with ``jax.vmap``).

  Examples:
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

  References:
    Jones, Scott, Ren, ElSayed, Hermann, Mayo & Mozer, "Learning in temporally
    structured environments", ICLR 2023.
  """
  checks.check_scalar(
      noise_variance, 'noise_variance', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
  targets = jnp.asarray(targets)
  predictions, pullback, rows = _jacobian_rows(
      lambda p: apply_fn(p, inputs), params)
  if predictions.shape != targets.shape:
    raise ValueError(
        f'`apply_fn(params, inputs)` returned shape {predictions.shape}, but '
        f'`targets` has shape {targets.shape}; they must match.')
  residual = (targets - predictions).astype(predictions.dtype)
  noise = jnp.asarray(noise_variance, predictions.dtype)
  (grads,) = pullback(-residual / noise)
  loss = 0.5 * jnp.sum(jnp.square(residual)) / noise
  info = ObservationInfo(loss=loss, predictions=predictions)
  if residual.ndim == 0:
    jacobian = jax.tree.map(lambda row: row[0], rows)
    return info, grads, {
        'jacobian': jacobian, 'residual': residual,
        'observation_covariance': noise}
  count = residual.size
  return info, grads, {
      'jacobian': rows,
      'residual': residual.reshape(count),
      'observation_covariance': noise * jnp.eye(count, dtype=noise.dtype)}


def categorical_observation(
    apply_fn: Callable[[ParamsT, Any], jax.Array],
    params: ParamsT,
    inputs: Any,
    labels: ArrayLike,
    *,
    epsilon: float = 1e-3,
) -> tuple[ObservationInfo, ParamsT, dict[str, Any]]:
  r"""Extra arguments of the Bayesian multiscale update for classification.

  ``apply_fn(params, inputs)`` returns logits :math:`f` of shape
  ``(*batch, C)`` and ``labels`` are integer classes of shape ``batch``
  (``()`` for one example). With :math:`p = \mathrm{softmax}(f)` and
  :math:`y` the one-hot labels, the extra arguments are the EKF's
  (generalised Gauss–Newton form, module docstring)

  .. math::

    H = \frac{\partial p}{\partial w}
      = (\mathrm{diag}(p) - pp^\top)\, \frac{\partial f}{\partial w}, \qquad
    e = y - p, \qquad
    R = \mathrm{diag}(p) - pp^\top + \epsilon I,

  flattened over the :math:`N = B\,C` outputs (:math:`R` block-diagonal over
  the examples). ``grads`` is the gradient of the cross-entropy
  :math:`-\sum \log p_y`.

  Args:
    apply_fn: ``apply_fn(params, inputs)`` returns logits of shape
      ``(*labels.shape, C)``.
    params: the params at which to predict.
    inputs: passed to ``apply_fn``.
    labels: integer class labels.
    epsilon: :math:`\epsilon > 0`, the noise floor (module docstring: it
      makes :math:`S` invertible without changing the update along the
      all-ones direction, and damps steps on classes with
      :math:`p_c \ll \epsilon`).

  Returns:
    ``(info, grads, extra)``: an :class:`ObservationInfo` (cross-entropy
    and class probabilities), the cross-entropy's gradient, and the dict
    of extra arguments for ``opt.update(grads, state, params, **extra)``.
    Computing :math:`H` costs :math:`N` backward passes.

  Examples:
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

  References:
    Ollivier, "Online natural gradient as a Kalman filter", Electronic
    Journal of Statistics, 2018. Chang et al., "Low-rank extended Kalman
    filtering for online learning of neural networks from streaming data",
    CoLLAs 2023.
  """
  checks.check_scalar(
      epsilon, 'epsilon', low=0.0, high=np.inf, low_inclusive=False,
      high_inclusive=False)
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
  probabilities = jax.nn.softmax(logits, axis=-1)
  count = probabilities.size
  basis = jnp.eye(count, dtype=logits.dtype).reshape(
      (count, *logits.shape))
  # Row n of H pulls back (diag(p) - p p^T) e_n through the logits.
  cotangents = basis * probabilities - probabilities * jnp.sum(
      basis * probabilities, axis=-1, keepdims=True)
  (rows,) = jax.vmap(logits_pullback)(cotangents)
  onehot = jax.nn.one_hot(labels, classes, dtype=probabilities.dtype)
  log_probabilities = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.sum(onehot * log_probabilities)
  (grads,) = logits_pullback(probabilities - onehot)
  residual = (onehot - probabilities).reshape(-1)
  flat = probabilities.reshape(-1, classes)
  examples = flat.shape[0]
  blocks = (jax.vmap(jnp.diag)(flat) - flat[:, :, None] * flat[:, None, :]
            + epsilon * jnp.eye(classes, dtype=flat.dtype))
  covariance = jnp.einsum(
      'bij,bd->bidj', blocks, jnp.eye(examples, dtype=flat.dtype)).reshape(
          examples * classes, examples * classes)
  info = ObservationInfo(loss=loss, predictions=probabilities)
  return info, grads, {
      'jacobian': rows, 'residual': residual,
      'observation_covariance': covariance}
