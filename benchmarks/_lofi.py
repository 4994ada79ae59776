r"""LoFi: the low-rank extended Kalman filter, and the full EKF it approximates.

Chang, Durán-Martín, Shestopaloff, Jones & Murphy, "Low-rank extended
Kalman filtering for online learning of neural networks from streaming
data", CoLLAs 2023 (LoFi). A single-timescale reference for the benchmarks:
one Gaussian belief over the :math:`P` params :math:`w` (flattened with
``jax.flatten_util.ravel_pytree``), with the dynamics

.. math::

  w_t = \gamma\, w_{t-1} + \mathcal N(0, q I_P),

and observations :math:`y_t = h(w_t, x_t) + \mathcal N(0, R_t)` with
:math:`N` outputs, linearised at the predicted mean: :math:`H_t = \partial
h/\partial w` (:math:`N \times P`), :math:`e_t = y_t - h(\mu_{t|t-1},
x_t)`.

**LoFi's belief.** The precision is diagonal plus low rank,

.. math::

  \Sigma_t^{-1} = \Lambda_t = \Upsilon_t + W_t W_t^\top, \qquad
  \Upsilon_t = \mathrm{diag}(\upsilon_t) \succ 0, \quad
  W_t \in \mathbb R^{P \times L},

started from :math:`\Upsilon_0 = I/\sigma_0^2`, :math:`W_0 = 0`.

**Predict** (LoFi's predict step). With :math:`d = \gamma^2 + q\upsilon`
(elementwise),

.. math::

  \mu_{t|t-1} = \gamma \mu_{t-1}, \quad
  \Upsilon_{t|t-1} = \Upsilon_{t-1} / d, \quad
  C_t = \big(I_L + q\, W_{t-1}^\top \mathrm{diag}(1/d)\, W_{t-1}\big)^{-1},
  \quad
  W_{t|t-1} = \gamma\, \mathrm{diag}(1/d)\, W_{t-1}\, \mathrm{chol}(C_t).

(In the paper's notation :math:`\mathrm{diag}(1/d) = \Upsilon_{t|t-1}
\Upsilon_{t-1}^{-1}`.) For the isotropic process noise :math:`qI` used here
the diagonal-plus-low-rank form is kept without loss: writing
:math:`\Lambda^{-1} = \Upsilon^{-1} - \Upsilon^{-1}W M W^\top\Upsilon^{-1}`,
:math:`M = (I + W^\top\Upsilon^{-1}W)^{-1}` (Woodbury), gives
:math:`\gamma^2\Lambda^{-1} + qI = D - UMU^\top` with :math:`D =
\mathrm{diag}(d)\Upsilon^{-1}`, :math:`U = \gamma\Upsilon^{-1}W`, and
Woodbury again gives :math:`(D - UMU^\top)^{-1} = D^{-1} + D^{-1}U(M^{-1} -
U^\top D^{-1}U)^{-1}U^\top D^{-1}`, with :math:`M^{-1} - U^\top D^{-1}U = I
+ q W^\top\mathrm{diag}(1/d)W = C^{-1}`: the two displayed terms, so for a
diagonal process noise the predict step loses nothing and LoFi's only
approximation is the truncation in the update (``tests/test_lofi.py``
checks LoFi against the full EKF with :math:`\gamma < 1`, :math:`q > 0`).
``chol`` may be any square root of :math:`C`; here :math:`L_B^{-\top}`
with :math:`L_B L_B^\top = C^{-1}`.

**Update.** Append the observation's whitened Jacobian to the low-rank
factor: with :math:`R_t = L_R L_R^\top`, :math:`A_t = H_t^\top L_R^{-\top}`
(:math:`P \times N`; :math:`A A^\top = H^\top R^{-1} H`),

.. math::

  \tilde W_t = [W_{t|t-1},\ A_t] \in \mathbb R^{P\times(L+N)}, \qquad
  \tilde\Lambda_t = \Upsilon_{t|t-1} + \tilde W_t \tilde W_t^\top
  = \Lambda_{t|t-1} + H_t^\top R_t^{-1} H_t,

the exact EKF posterior precision. The mean is the EKF's, through Woodbury
(:math:`G = I_{L+N} + \tilde W^\top\Upsilon^{-1}\tilde W`):

.. math::

  \mu_t = \mu_{t|t-1} + \tilde\Lambda_t^{-1} H_t^\top R_t^{-1} e_t, \qquad
  \tilde\Lambda^{-1} g = \Upsilon^{-1}g - \Upsilon^{-1}\tilde W G^{-1}
  \tilde W^\top \Upsilon^{-1} g.

Then the precision is truncated back to rank :math:`L`: with the SVD
:math:`\tilde W = \tilde U \tilde S \tilde V^\top` (here through the
eigendecomposition :math:`\tilde W^\top \tilde W = \tilde V \tilde S^2
\tilde V^\top`, so :math:`\tilde W\tilde V = \tilde U \tilde S` needs no
division by small singular values), :math:`W_t` keeps the :math:`L`
largest columns of :math:`\tilde W \tilde V` and the dropped ones,
:math:`W_\perp`, move to the diagonal,

.. math::

  \Upsilon_t = \Upsilon_{t|t-1} + \mathrm{diag}(W_\perp W_\perp^\top),

so that :math:`\mathrm{diag}(\Lambda_t) = \mathrm{diag}(\tilde\Lambda_t)`
(the rotation by the orthogonal :math:`\tilde V` leaves
:math:`\mathrm{diag}(\tilde W\tilde W^\top)` unchanged). :math:`\Upsilon`
never decreases in an update and stays positive in a predict, so
:math:`\Lambda_t \succ 0` always. With :math:`L \ge P` nothing of rank is
dropped (:math:`\mathrm{rank}\,\tilde W \le P`) and LoFi is the full EKF.
Cost :math:`O(P(L+N)^2 + (L+N)^3)` per step, memory :math:`P(L+1)`.

**The full EKF** (:func:`full_ekf`, covariance form, :math:`O(P^2 N)` per
step and :math:`P^2` memory): :math:`S = H\Sigma H^\top + R`, :math:`K =
\Sigma H^\top S^{-1}`, :math:`\mu \leftarrow \gamma(\mu + K e)`,
:math:`\Sigma \leftarrow \gamma^2(\Sigma - K S K^\top) + qI`.

Both are ``optax.GradientTransformationExtraArgs`` with the contract of
:func:`multiscale_optax.bayesian_multiscale`: ``opt.update(grads, state,
params, jacobian=J, residual=e, observation_covariance=R)`` at the params
that made the prediction (the predicted mean :math:`\mu_{t|t-1}`); the
update returned moves the params to :math:`\mu_{t+1|t}`. ``jacobian`` is
params-shaped with a scalar ``residual``, or has leaves ``(N,
*param.shape)`` with ``residual`` of shape ``(N,)``; ``observation_covariance``
defaults to :math:`rI`. ``grads`` is used only for its structure.
Hyperparameters may be traced (vmapped over a grid); the rank is static.

Used by ``benchmarks/online_rotation.py``; checked in ``tests/test_lofi.py``.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


class LofiState(NamedTuple):
  r"""State of :func:`lofi`: the predicted precision for the next example.

  Attributes:
    count: updates applied so far.
    diagonal: :math:`\upsilon_{t|t-1}`, shape ``(P,)``.
    low_rank: :math:`W_{t|t-1}`, shape ``(P, L)``.
  """

  count: jax.Array  # type: ignore[assignment]
  diagonal: jax.Array
  low_rank: jax.Array


class FullEkfState(NamedTuple):
  r"""State of :func:`full_ekf`.

  Attributes:
    count: updates applied so far.
    covariance: :math:`\Sigma_{t|t-1}`, shape ``(P, P)``.
  """

  count: jax.Array  # type: ignore[assignment]
  covariance: jax.Array


def _observation(updates, jacobian, residual, observation_covariance,
                 noise_variance, dtype):
  """``(H, e, R)`` flattened: ``(N, P)``, ``(N,)``, ``(N, N)``."""
  if jacobian is None or residual is None:
    raise ValueError('needs the extra arguments `jacobian` and `residual` '
                     '(see multiscale_optax.gaussian_observation).')
  error = jnp.asarray(residual, dtype)
  flat_updates, _ = ravel_pytree(updates)
  if error.ndim == 0:
    rows = ravel_pytree(jacobian)[0][None, :]
    error = error[None]
  else:
    rows = jax.vmap(lambda tree: ravel_pytree(tree)[0])(jacobian)
  if rows.shape[1] != flat_updates.size:
    raise ValueError(
        f'`jacobian` has {rows.shape[1]} entries per output, the params '
        f'{flat_updates.size}.')
  outputs = error.shape[0]
  if observation_covariance is None:
    covariance = noise_variance * jnp.eye(outputs, dtype=dtype)
  else:
    covariance = jnp.asarray(observation_covariance, dtype)
    covariance = jnp.broadcast_to(
        covariance * jnp.eye(outputs, dtype=dtype) if covariance.ndim == 0
        else covariance, (outputs, outputs))
  return rows.astype(dtype), error, covariance


def lofi_predict(diagonal: jax.Array, low_rank: jax.Array, decay: Any,
                 process_variance: Any) -> tuple[jax.Array, jax.Array]:
  r"""The predict step on the precision :math:`(\upsilon, W)` (module
  docstring); the mean is multiplied by :math:`\gamma` separately."""
  dtype = diagonal.dtype
  decay = jnp.asarray(decay, dtype)
  process_variance = jnp.asarray(process_variance, dtype)
  denominator = decay**2 + process_variance * diagonal
  scaled = low_rank / denominator[:, None]
  rank = low_rank.shape[1]
  inverse_c = jnp.eye(rank, dtype=dtype) + process_variance * (
      low_rank.T @ scaled)
  factor = jnp.linalg.cholesky(0.5 * (inverse_c + inverse_c.T))
  # W diag-scaled times L_B^{-T}: chol(C) up to an orthogonal factor.
  root = jax.scipy.linalg.solve_triangular(
      factor, jnp.eye(rank, dtype=dtype), lower=True).T
  return diagonal / denominator, (decay * scaled) @ root


def lofi_update(mean: jax.Array, diagonal: jax.Array, low_rank: jax.Array,
                rows: jax.Array, error: jax.Array, covariance: jax.Array,
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The update step: posterior mean, then the rank-:math:`L` truncation
  of :math:`\tilde W = [W, H^\top L_R^{-\top}]` (module docstring)."""
  dtype = diagonal.dtype
  outputs = error.shape[0]
  rank = low_rank.shape[1]
  noise_factor = jnp.linalg.cholesky(covariance)
  inverse_noise_factor = jax.scipy.linalg.solve_triangular(
      noise_factor, jnp.eye(outputs, dtype=dtype), lower=True)
  whitened_rows = inverse_noise_factor @ rows  # L_R^{-1} H, (N, P)
  extended = jnp.concatenate([low_rank, whitened_rows.T], axis=1)
  gradient = whitened_rows.T @ (inverse_noise_factor @ error)  # H^T R^-1 e
  scaled = extended / diagonal[:, None]
  gram = jnp.eye(rank + outputs, dtype=dtype) + extended.T @ scaled
  gram = 0.5 * (gram + gram.T)
  projected = jax.scipy.linalg.cho_solve(
      (jnp.linalg.cholesky(gram), True), scaled.T @ gradient)
  step = gradient / diagonal - scaled @ projected
  # Truncation: eigenvalues in ascending order; keep the L largest.
  _, vectors = jnp.linalg.eigh(extended.T @ extended)
  rotated = extended @ vectors
  dropped, kept = rotated[:, :outputs], rotated[:, outputs:]
  diagonal = diagonal + jnp.sum(jnp.square(dropped), axis=1)
  return mean + step, diagonal, kept


def lofi(rank: int, initial_variance: Any, noise_variance: Any, *,
         decay: Any = 1.0, process_variance: Any = 0.0,
         ) -> optax.GradientTransformationExtraArgs:
  r"""LoFi (module docstring) as an optax transformation.

  Args:
    rank: :math:`L \ge 1`, the columns of :math:`W` (static).
    initial_variance: :math:`\sigma_0^2 > 0`, the prior variance of every
      param around the initial params (:math:`\Upsilon_0 = I/\sigma_0^2`).
    noise_variance: :math:`r > 0`, the default :math:`R = rI`.
    decay: :math:`\gamma`.
    process_variance: :math:`q \ge 0`.

  Returns:
    A transformation whose state is a :class:`LofiState`; arithmetic in the
    params' dtype.
  """
  rank = int(rank)
  if rank < 1:
    raise ValueError(f'`rank` must be at least 1, got {rank}.')

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    dtype = flat.dtype
    return LofiState(
        count=jnp.zeros([], jnp.int32),
        diagonal=jnp.full(flat.shape, 1.0, dtype)
        / jnp.asarray(initial_variance, dtype),
        low_rank=jnp.zeros((flat.size, rank), dtype))

  def update_fn(updates, state, params=None, *, jacobian=None, residual=None,
                observation_covariance=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError('lofi needs `params` (the predicted mean).')
    mean, unravel = ravel_pytree(params)
    dtype = state.diagonal.dtype
    rows, error, covariance = _observation(
        updates, jacobian, residual, observation_covariance,
        jnp.asarray(noise_variance, dtype), dtype)
    posterior, diagonal, low_rank = lofi_update(
        mean.astype(dtype), state.diagonal, state.low_rank, rows, error,
        covariance)
    diagonal, low_rank = lofi_predict(diagonal, low_rank, decay,
                                      process_variance)
    increment = jnp.asarray(decay, dtype) * posterior - mean.astype(dtype)
    new_state = LofiState(optax.safe_increment(state.count), diagonal,
                          low_rank)
    return unravel(increment.astype(mean.dtype)), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def full_ekf(initial_variance: Any, noise_variance: Any, *,
             decay: Any = 1.0, process_variance: Any = 0.0,
             ) -> optax.GradientTransformationExtraArgs:
  r"""The extended Kalman filter with a full :math:`P \times P` covariance.

  Same model and contract as :func:`lofi` (module docstring); the update
  forms :math:`KSK^\top` as :math:`B^\top B`, :math:`B = L_S^{-1} H
  \Sigma` (symmetric and positive semidefinite up to rounding).
  """

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    dtype = flat.dtype
    return FullEkfState(
        count=jnp.zeros([], jnp.int32),
        covariance=jnp.asarray(initial_variance, dtype)
        * jnp.eye(flat.size, dtype=dtype))

  def update_fn(updates, state, params=None, *, jacobian=None, residual=None,
                observation_covariance=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError('full_ekf needs `params` (the predicted mean).')
    mean, unravel = ravel_pytree(params)
    covariance = state.covariance
    dtype = covariance.dtype
    rows, error, noise = _observation(
        updates, jacobian, residual, observation_covariance,
        jnp.asarray(noise_variance, dtype), dtype)
    outputs = error.shape[0]
    cross = rows @ covariance  # H Sigma, (N, P)
    innovation = cross @ rows.T + noise
    factor = jnp.linalg.cholesky(0.5 * (innovation + innovation.T))
    inverse_factor = jax.scipy.linalg.solve_triangular(
        factor, jnp.eye(outputs, dtype=dtype), lower=True)
    whitened = inverse_factor @ cross  # B = L_S^{-1} H Sigma
    step = whitened.T @ (inverse_factor @ error)  # Sigma H^T S^-1 e
    decay_ = jnp.asarray(decay, dtype)
    covariance = decay_**2 * (covariance - whitened.T @ whitened) + (
        jnp.asarray(process_variance, dtype) * jnp.eye(mean.size, dtype=dtype))
    increment = decay_ * (mean.astype(dtype) + step) - mean.astype(dtype)
    return unravel(increment.astype(mean.dtype)), FullEkfState(
        optax.safe_increment(state.count), covariance)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dense_precision(state: LofiState) -> jax.Array:
  r""":math:`\Lambda = \Upsilon + WW^\top` as a dense matrix (for tests)."""
  return jnp.diag(state.diagonal) + state.low_rank @ state.low_rank.T
