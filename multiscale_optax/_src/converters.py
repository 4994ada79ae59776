r"""Linear optimizers as multiscale learners: momentum, AggMo, QHM, L2 Init.

Jones, `Learning at Multiple Timescales <https://arxiv.org/abs/2211.10311>`_,
NeurIPS 2022, §4–5: an optimizer whose per-weight state evolves linearly in
the gradient is, after diagonalising its transition matrix, a sum of
independently decaying subweights. :func:`from_linear_dynamics` does this
for any such optimizer; heavy-ball and Nesterov momentum, AggMo and QHM are
built on top of it, and L2 Init (SGD pulled toward the initial params) is a
permanent part plus one decaying subweight (:func:`from_l2_init`).

Convention (one weight; every weight of a network evolves the same way):
the optimizer's state :math:`s \in \mathbb{R}^m` *includes the weight*, which
is read out linearly,

.. math::

  s_{t+1} = T s_t + b\, u_t, \qquad w_t = c^\top s_t,

where :math:`u_t` is the gradient (or update direction). With the spectral
decomposition :math:`T = \sum_j \lambda_j P_j` (projectors :math:`P_j`),
:math:`w_{t+k} = \sum_j \lambda_j^k c^\top P_j s_t + \dots`, so the
subweights :math:`\omega_j = c^\top P_j s` obey
:math:`\omega_{j,t+1} = \lambda_j \omega_{j,t} - \alpha_j u_t` with
:math:`\alpha_j = -c^\top P_j b`: the multiscale learner (eq. 1).

Converters need concrete hyperparameters (the number of modes depends on
their values) and return NumPy float64 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax

from multiscale_optax._src import checks
from multiscale_optax._src import precision
from multiscale_optax._src.benna_fusi import BennaFusiModes
from multiscale_optax._src.benna_fusi import BennaFusiState

# The distance below which two eigenvalues are one mode (see
# from_linear_dynamics). Eigenvalues are dimensionless, so an absolute
# distance does not depend on the units of the state's coordinates (the old
# rule scaled it by ||T||, so a learning rate of 1e6 merged 1 and 0.9). It
# sits well above np.linalg.eig's rounding for well-conditioned transitions
# (about 1e-15 times the eigenvalue's condition number) and below the
# separations users ask for (momentum 0.999999 is 1e-6 from 1).
_DEFAULT_TOLERANCE = 1e-9
_MAX_TOLERANCE = 1e-3


class MultiscaleSpec(NamedTuple):
  r"""A linear optimizer's multiscale form, returned by the converters.

  Modes are sorted from the slowest (largest decay) to the fastest, so a
  decay-1 mode (the stateless slow weight) comes first.

  Attributes:
    learning_rates: :math:`\alpha_j`, float64, one per mode (may be
      negative: momentum is a fast weight with a negative learning rate).
    decays: :math:`\gamma_j = \lambda_j`, float64, in :math:`(-1, 1]`;
      eigenvalues within the tolerance of 1 are exactly ``1.0``.
    subweights_from_state: shape ``(modes, m)``, row :math:`j` is
      :math:`c^\top P_j`: subweights :math:`\omega = M s`.
    state_from_subweights: shape ``(m, modes)``, column :math:`j` is a
      state in the range of :math:`P_j` with :math:`c^\top v_j = 1`
      (:math:`P_j b / (c^\top P_j b)` where that is defined): a state
      :math:`s = \sum_j \omega_j v_j` with the given subweights.
  """

  learning_rates: np.ndarray
  decays: np.ndarray
  subweights_from_state: np.ndarray
  state_from_subweights: np.ndarray


def _concrete_matrix(value: Any, name: str, ndim: int) -> np.ndarray:
  if checks.is_traced(value):
    raise TypeError(
        f'`{name}` must be concrete (not traced): the number of modes depends '
        'on its values.')
  if np.iscomplexobj(value) or (
      isinstance(value, np.ndarray | jax.Array)
      and jnp.issubdtype(value.dtype, jnp.complexfloating)):
    raise TypeError(
        f'`{name}` must be real, got a complex array: the imaginary part '
        'would be dropped. Complex (rotating) dynamics have no multiscale '
        'form.')
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise TypeError(
        f'`{name}` must be a real {ndim}-D array, got {value!r}.') from error
  if array.ndim != ndim:
    raise ValueError(
        f'`{name}` must be {ndim}-D, got shape {array.shape}.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'`{name}` must be finite, got {array}.')
  return array


def _cluster(values: np.ndarray, tolerance: float) -> list[list[int]]:
  """Groups (complex) eigenvalues closer than ``tolerance`` (single link)."""
  clusters: list[list[int]] = []
  for index in np.argsort(values.real, kind='stable'):
    for cluster in clusters:
      if np.min(np.abs(values[cluster] - values[index])) <= tolerance:
        cluster.append(int(index))
        break
    else:
      clusters.append([int(index)])
  return clusters


def from_linear_dynamics(
    transition: npt.ArrayLike,
    input: npt.ArrayLike,
    readout: npt.ArrayLike,
    *,
    tolerance: float = _DEFAULT_TOLERANCE,
) -> MultiscaleSpec:
  r"""The multiscale form of any linear optimizer (§4–5).

  The optimizer's per-weight state :math:`s \in \mathbb{R}^m` contains the
  weight, read out linearly, and moves linearly in the gradient
  :math:`u_t`:

  .. math::

    s_{t+1} = T s_t + b\, u_t, \qquad w_t = c^\top s_t,

  with :math:`T` = ``transition``, :math:`b` = ``input``, :math:`c` =
  ``readout``. (Heavy ball in ``optax.sgd`` is :math:`s = (w, m)`,
  :math:`T = [[1, -\eta\beta], [0, \beta]]`, :math:`b = (-\eta, 1)`,
  :math:`c = (1, 0)`.) With the spectral decomposition
  :math:`T = \sum_j \lambda_j P_j` (one projector per distinct
  eigenvalue), the subweights :math:`\omega_j = c^\top P_j s` sum to
  :math:`w` and evolve independently:

  .. math::

    \omega_{j,t+1} = \lambda_j\, \omega_{j,t} - \alpha_j u_t, \qquad
    \alpha_j = -c^\top P_j b,

  so ``multiscale(spec.learning_rates, spec.decays)`` reproduces the
  optimizer's weight trajectory exactly, and
  ``initial_subweights=state_to_subweights(spec, state)`` continues a
  running one.

  ``tolerance`` (:math:`\tau`) is one distance in the complex plane, used
  for every decision about eigenvalues. Eigenvalues are dimensionless (they
  do not change when the state's coordinates change units), so neither does
  :math:`\tau`: computed eigenvalues within :math:`\tau` of each other
  are one mode (one spectral projector :math:`P_j`; if
  :math:`\|(T - \lambda_j) P_j\|_2 > \sqrt\tau\, \|T\|_2` the
  eigenvalue has too few eigenvectors: a Jordan block, refused);
  within :math:`\tau` of 1 an eigenvalue is exactly ``1.0`` (so the slow
  weight is recognised by :func:`multiscale` as stateless); imaginary parts
  up to :math:`\tau` are rounding, larger ones make the mode complex;
  :math:`|\lambda| > 1 + \tau` is unstable and :math:`\lambda \le -1 +
  \tau` has no decay. Every returned decay lies in :math:`(-1, 1]`. The
  default :math:`10^{-9}` is far above ``np.linalg.eig``'s rounding for
  well-conditioned transitions and far below the separations of realistic
  optimizers (momentum 0.999999 is :math:`10^{-6}` from 1); raise it for a
  badly conditioned transition whose eigenvalue 1 comes out as
  :math:`1 \pm 10^{-8}`, lower it to separate eigenvalues closer than
  :math:`10^{-9}`. Modes that are unobservable
  (:math:`c^\top P_j = 0`: they never reach the weight) or unreachable
  (:math:`P_j b = 0`: the gradient never excites them; an eigenvalue-1 mode
  is kept anyway, as it holds the initial weight), to rounding error, are
  dropped. Hence ``state_to_subweights`` is exact for states without
  components in dropped observable modes, which includes every state
  reached from zero buffers and any weight.

  Which transitions are refused (``ValueError``, saying which eigenvalue and
  why): complex eigenvalues (rotating modes have no real decay; they are
  not supported, rather than represented as 2×2 blocks), eigenvalues with
  :math:`|\lambda| > 1` (unstable) or :math:`\lambda \le -1` (no multiscale
  decay), and non-diagonalisable transitions (a Jordan block, e.g. AggMo with
  a beta of 1, whose weight grows linearly in time after one gradient).

  Args:
    transition: :math:`T`, shape ``(m, m)``, real.
    input: :math:`b`, shape ``(m,)``: how the gradient enters the state.
    readout: :math:`c`, shape ``(m,)``: the weight is :math:`c^\top s`.
    tolerance: :math:`\tau \in (0, 10^{-3}]`, the distance below which
      eigenvalues are equal (see above).

  Returns:
    A :class:`MultiscaleSpec` with modes sorted by decreasing decay.

  Raises:
    TypeError: an input is traced or not real (complex arrays included).
    ValueError: shapes do not match, a value is not finite, ``tolerance``
      is outside :math:`(0, 10^{-3}]`, or the transition has complex
      eigenvalues, is unstable or is not diagonalisable.

  Examples:
    >>> import multiscale_optax as mso
    >>> lr, beta = 0.1, 0.9
    >>> spec = mso.from_linear_dynamics(
    ...     [[1.0, -lr * beta], [0.0, beta]], [-lr, 1.0], [1.0, 0.0])
    >>> print(spec.decays, spec.learning_rates.round(6))
    [1.  0.9] [ 1.  -0.9]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4–5 (eqs. 5, 8–10).
  """
  matrix, b, c, tol = _checked_system(transition, input, readout, tolerance)
  eigenvalues, vectors = np.linalg.eig(matrix)
  clusters = _cluster(eigenvalues, tol)
  centers = _real_decays(eigenvalues, clusters, tol)
  projectors = _mode_projectors(matrix, vectors, centers, clusters, tol)
  modes = _observable_modes(centers, projectors, vectors, b, c)
  if not modes:
    raise ValueError(
        'No mode of `transition` is both observable through `readout` and '
        'reachable from `input` (or a permanent weight): the weight never '
        'moves.')
  modes.sort(key=lambda mode: -mode[0])
  return MultiscaleSpec(
      learning_rates=np.array([mode[1] for mode in modes], np.float64),
      decays=np.array([mode[0] for mode in modes], np.float64),
      subweights_from_state=np.stack([mode[2] for mode in modes]),
      state_from_subweights=np.stack([mode[3] for mode in modes], axis=1),
  )


def _checked_system(
    transition: Any, input: Any, readout: Any, tolerance: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """The system's matrices as float64 arrays, checked; and the tolerance."""
  matrix = _concrete_matrix(transition, 'transition', 2)
  size = matrix.shape[0]
  if matrix.shape != (size, size) or size == 0:
    raise ValueError(
        f'`transition` must be a non-empty square matrix, got shape '
        f'{matrix.shape}.')
  b = _concrete_matrix(input, 'input', 1)
  c = _concrete_matrix(readout, 'readout', 1)
  for name, vector in (('input', b), ('readout', c)):
    if vector.shape != (size,):
      raise ValueError(
          f'`{name}` must have shape ({size},) to match `transition`, got '
          f'{vector.shape}.')
  checks.check_scalar(
      tolerance, 'tolerance', low=0.0, high=_MAX_TOLERANCE,
      low_inclusive=False)
  return matrix, b, c, float(tolerance)


def _real_decays(
    eigenvalues: np.ndarray, clusters: list[list[int]], tol: float
) -> list[float]:
  """Per cluster of eigenvalues, its real decay in (-1, 1] (else raises)."""
  centers = []
  for cluster in clusters:
    center = complex(np.mean(eigenvalues[cluster]))
    if abs(center.imag) > tol:
      raise ValueError(
          '`transition` has complex eigenvalues '
          f'{center.real:.6g} ± {abs(center.imag):.6g}i: such modes rotate '
          '(oscillate) instead of decaying geometrically, and a multiscale '
          'subweight needs a real decay. Complex modes are not supported.')
    value = center.real
    if abs(value - 1.0) <= tol:
      centers.append(1.0)
      continue
    if abs(value) > 1.0 + tol:
      raise ValueError(
          f'`transition` is unstable: it has the eigenvalue {value:.10g} '
          f'with |λ| > 1 + tolerance ({tol:.3g}), so the state grows without '
          'bound.')
    if value <= -1.0 + tol:
      raise ValueError(
          f'`transition` has the eigenvalue {value:.10g} <= -1 + tolerance: '
          'the mode flips sign forever without decaying; multiscale decays '
          'must lie in (-1, 1].')
    centers.append(value)

  return centers


def _mode_projectors(
    matrix: np.ndarray, vectors: np.ndarray, centers: list[float],
    clusters: list[list[int]], tol: float,
) -> list[np.ndarray]:
  """Per cluster, the projector onto its modes; raises unless diagonalisable."""
  scale = float(np.linalg.norm(matrix, 2))
  # Diagonalisable iff T = sum_c lambda_c P_c, i.e. every cluster's
  # defect (T - lambda_c) P_c vanishes; a Jordan block leaves its nilpotent
  # part there. Judged relative to ||T||, which (unlike the eigenvectors'
  # angles) does not depend on the units of the state's coordinates.
  try:
    inverse = np.linalg.inv(vectors)
  except np.linalg.LinAlgError:
    inverse = np.full_like(vectors, np.nan)
  projectors = []
  allowed = np.sqrt(tol) * max(scale, np.finfo(np.float64).tiny)
  for center, cluster in zip(centers, clusters):
    projector = (vectors[:, cluster] @ inverse[cluster, :]).real
    projectors.append(projector)
    defect = np.linalg.norm(matrix @ projector - center * projector, 2)
    if len(cluster) > 1 and not defect <= allowed:
      raise ValueError(
          '`transition` is not diagonalisable: the eigenvalue '
          f'{center:.10g} has algebraic multiplicity {len(cluster)} but '
          'fewer independent eigenvectors (a Jordan block). Its response to '
          'one gradient grows polynomially in time (e.g. AggMo with a beta '
          'of 1 integrates the gradient twice), which no sum of '
          'geometrically decaying subweights can produce.')
  reconstruction = sum(
      center * projector for center, projector in zip(centers, projectors))
  if not np.linalg.norm(reconstruction - matrix, 2) <= allowed:
    raise ValueError(
        '`transition` is numerically not diagonalisable: its eigenvectors '
        'are nearly dependent (cond = '
        f'{np.linalg.cond(vectors):.3g}), e.g. a Jordan block with a tiny '
        'coupling. Modes cannot be separated reliably.')

  return projectors


def _observable_modes(
    centers: list[float], projectors: list[np.ndarray], vectors: np.ndarray,
    b: np.ndarray, c: np.ndarray,
) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
  """Per observable and reachable mode: (decay, rate, readout, state map)."""
  # Only modes that vanish to rounding error are dropped.
  negligible = 100.0 * np.finfo(np.float64).eps * float(
      np.linalg.cond(vectors))
  modes = []
  c_norm = max(float(np.linalg.norm(c)), np.finfo(float).tiny)
  b_norm = max(float(np.linalg.norm(b)), np.finfo(float).tiny)
  for center, projector in zip(centers, projectors):
    observe = c @ projector
    reach = projector @ b
    observable = np.linalg.norm(observe) > negligible * c_norm
    reachable = np.linalg.norm(reach) > negligible * b_norm
    if not observable or not (reachable or center == 1.0):
      continue
    gain = float(observe @ b)
    if abs(gain) > negligible * c_norm * b_norm:
      back = reach / gain
    else:
      back = projector @ observe / float(observe @ observe)
    modes.append((center, -gain, observe, back))
  return modes


def from_momentum(
    learning_rate: float, momentum: float, nesterov: bool = False
) -> MultiscaleSpec:
  r"""Heavy-ball or Nesterov momentum (``optax.sgd``) as fast weights (§5).

  ``optax.sgd(learning_rate, momentum, nesterov)`` keeps a trace
  :math:`m \leftarrow \beta m + u` and moves the weight by
  :math:`-\eta m` (heavy ball) or :math:`-\eta(u + \beta m)` (Nesterov,
  with the new :math:`m`), where :math:`\eta` is ``learning_rate`` and
  :math:`\beta` is ``momentum``. As a linear system in :math:`s = (w, m)`
  (see :func:`from_linear_dynamics`):

  .. math::

    T = \begin{bmatrix} 1 & -\eta\beta^{1+\nu} \\ 0 & \beta \end{bmatrix},
    \quad b = \begin{bmatrix} -\eta(1 + \nu\beta) \\ 1 \end{bmatrix},
    \quad c = (1, 0),

  with :math:`\nu = 1` for Nesterov, else 0. The result is a slow weight
  with rate :math:`\eta/(1-\beta)` and a fast weight with decay
  :math:`\beta` and the negative rate :math:`-\eta\beta/(1-\beta)`
  (Nesterov: :math:`-\eta\beta^2/(1-\beta)`).

  Args:
    learning_rate: :math:`\eta`, a finite real.
    momentum: :math:`\beta \in [0, 1)` (0 gives plain SGD, one mode).
    nesterov: whether to use Nesterov's variant.

  Returns:
    A :class:`MultiscaleSpec` on the state :math:`(w, m)`.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: ``momentum`` is outside :math:`[0, 1)` or a value is not
      finite.

  Examples:
    >>> import multiscale_optax as mso
    >>> spec = mso.from_momentum(0.1, 0.9)
    >>> print(spec.decays, spec.learning_rates.round(6))
    [1.  0.9] [ 1.  -0.9]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §5, eqs. (8)–(10).
  """
  checks.check_scalar(learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  checks.check_scalar(
      momentum, 'momentum', low=0.0, high=1.0, high_inclusive=False)
  nesterov = checks.check_bool(nesterov, 'nesterov')
  eta, beta = float(learning_rate), float(momentum)
  if nesterov:
    transition = [[1.0, -eta * beta * beta], [0.0, beta]]
    gradient = [-eta * (1.0 + beta), 1.0]
  else:
    transition = [[1.0, -eta * beta], [0.0, beta]]
    gradient = [-eta, 1.0]
  return from_linear_dynamics(transition, gradient, [1.0, 0.0])


def from_aggmo(
    learning_rate: float, betas: npt.ArrayLike
) -> MultiscaleSpec:
  r"""Aggregated momentum (AggMo) as a multiscale learner.

  AggMo (Lucas et al., ICLR 2019) keeps :math:`K` momentum buffers, starting
  at zero, and moves the weight by their average:

  .. math::

    v_j \leftarrow b_j v_j + u, \qquad
    \Delta w = -\frac{\eta}{K} \sum_{j=1}^K v_j,

  where :math:`\eta` is ``learning_rate`` and :math:`b_j` is ``betas[j-1]``.
  With state :math:`s = (w, v_1, \dots, v_K)` this is linear
  (:func:`from_linear_dynamics`); equal betas merge into one mode and a
  beta of 0 adds no mode. A beta of 1 makes the transition a Jordan block
  (the weight would integrate the gradient twice), which is refused.

  Args:
    learning_rate: :math:`\eta`, a finite real.
    betas: :math:`b_1, \dots, b_K`, each in :math:`[0, 1]`; 1 raises.

  Returns:
    A :class:`MultiscaleSpec` on the state :math:`(w, v_1, \dots, v_K)`.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: a beta is outside :math:`[0, 1]`, or the transition cannot
      be converted (a beta of 1: not diagonalisable).

  Examples:
    >>> import multiscale_optax as mso
    >>> spec = mso.from_aggmo(0.1, [0.0, 0.9, 0.99])
    >>> print(spec.decays)
    [1.   0.99 0.9 ]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §5; Lucas, Sun, Zemel
    & Grosse, Aggregated Momentum, ICLR 2019.
  """
  checks.check_scalar(learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  beta_entries = checks.concrete_vector_entries(betas, 'betas')
  checks.check_finite(beta_entries, 'betas')
  checks.check_range(
      beta_entries, 'betas', low=0.0, high=1.0, low_inclusive=True,
      high_inclusive=True)
  beta = np.asarray(beta_entries, np.float64)
  count = len(beta)
  eta = float(learning_rate)
  transition = np.zeros((count + 1, count + 1))
  transition[0, 0] = 1.0
  transition[0, 1:] = -eta / count * beta
  transition[1:, 1:] = np.diag(beta)
  gradient = np.concatenate([[-eta], np.ones(count)])
  readout = np.zeros(count + 1)
  readout[0] = 1.0
  try:
    return from_linear_dynamics(transition, gradient, readout)
  except ValueError as error:
    raise ValueError(
        f'`betas` = {list(beta_entries)} give an AggMo transition that has '
        f'no multiscale form: {error}') from error


def from_qhm(learning_rate: float, nu: float, beta: float) -> MultiscaleSpec:
  r"""Quasi-hyperbolic momentum (QHM) as a multiscale learner.

  QHM (Ma & Yarats, ICLR 2019) averages the plain gradient and a momentum
  buffer (starting at zero):

  .. math::

    m \leftarrow \beta m + (1 - \beta) u, \qquad
    \Delta w = -\eta \big( (1 - \nu) u + \nu m \big),

  where :math:`\eta` is ``learning_rate``, :math:`\nu` is ``nu`` and
  :math:`\beta` is ``beta`` (:math:`\nu = 1` is normalised heavy ball,
  :math:`\nu = 0` plain SGD). With state :math:`s = (w, m)` this is linear
  (:func:`from_linear_dynamics`): a slow weight with rate :math:`\eta` and,
  for :math:`\nu\beta \neq 0`, a fast weight with decay :math:`\beta` and
  rate :math:`-\eta\nu\beta`.

  Args:
    learning_rate: :math:`\eta`, a finite real.
    nu: :math:`\nu`, a finite real (the paper uses :math:`[0, 1]`).
    beta: :math:`\beta \in [0, 1)`.

  Returns:
    A :class:`MultiscaleSpec` on the state :math:`(w, m)`.

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: ``beta`` is outside :math:`[0, 1)` or a value is not finite.

  Examples:
    >>> import multiscale_optax as mso
    >>> spec = mso.from_qhm(0.1, 0.7, 0.9)
    >>> print(spec.decays, spec.learning_rates.round(6))
    [1.  0.9] [ 0.1   -0.063]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §5; Ma & Yarats,
    Quasi-hyperbolic momentum and Adam for deep learning, ICLR 2019.
  """
  checks.check_scalar(learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  checks.check_scalar(nu, 'nu', low=-np.inf, high=np.inf)
  checks.check_scalar(beta, 'beta', low=0.0, high=1.0, high_inclusive=False)
  eta, nu, beta = float(learning_rate), float(nu), float(beta)
  transition = [[1.0, -eta * nu * beta], [0.0, beta]]
  gradient = [-eta * ((1.0 - nu) + nu * (1.0 - beta)), 1.0 - beta]
  return from_linear_dynamics(transition, gradient, [1.0, 0.0])


def from_l2_init(learning_rate: float, l2: float) -> MultiscaleSpec:
  r"""L2 Init (SGD with an L2 pull toward the initial params) as subweights.

  L2 Init (Kumar, Marklund & Van Roy) regularises toward the initial params
  :math:`\theta_0` instead of toward zero. Under SGD its step is

  .. math::

    \theta_{t+1} = \theta_t - \alpha\big(\nabla L(\theta_t)
      + \lambda (\theta_t - \theta_0)\big),

  where :math:`\alpha` is ``learning_rate`` and :math:`\lambda` is ``l2``
  (the gradient of the penalty :math:`\tfrac{\lambda}{2}\lVert\theta -
  \theta_0\rVert^2`; a penalty written :math:`\lambda'\lVert\theta -
  \theta_0\rVert^2`, as in the paper, is ``l2`` :math:`= 2\lambda'`).
  Writing :math:`\theta = \theta_0 + \omega` turns it into a multiscale
  learner with two subweights:

  .. math::

    \omega_{t+1} = (1 - \alpha\lambda)\, \omega_t - \alpha \nabla L(\theta_t),
    \qquad \omega_0 = 0,

  a permanent part :math:`\theta_0` (decay 1, rate 0) and one subweight
  with decay :math:`\gamma = 1 - \alpha\lambda` and rate :math:`\alpha`.
  :func:`multiscale` stores the decaying subweight, starting at zero, and
  implies the permanent part as the params minus it, which at ``init`` is
  :math:`\theta_0`; with rate 0 it never moves. So
  ``multiscale(spec.learning_rates, spec.decays)`` *is* ``optax.sgd``
  plus the pull :math:`\alpha\lambda(\theta - \theta_0)`, with
  :math:`\theta_0` the params passed to ``init``.

  As a linear system (:func:`from_linear_dynamics`) the state is
  :math:`s = (\theta, \theta_0)`, :math:`T = [[\gamma, \alpha\lambda], [0,
  1]]`, :math:`b = (-\alpha, 0)`, :math:`c = (1, 0)`; the spec is built in
  closed form rather than by eigendecomposition, so an :math:`\alpha\lambda`
  below that function's tolerance still gets its own mode. Where
  :math:`1 - \alpha\lambda` rounds to 1 in float64 (``l2 = 0``, or
  :math:`\alpha\lambda < 2^{-53}`) the result is plain SGD, one mode.

  The decay must lie in :math:`(-1, 1]`, i.e. :math:`0 \le \alpha\lambda <
  2`. For :math:`\alpha\lambda < 1` the distance to :math:`\theta_0`
  shrinks geometrically, the usual regime. At :math:`\alpha\lambda = 1` the
  pull returns the weight to :math:`\theta_0` every step (it keeps only the
  last gradient step); for :math:`1 < \alpha\lambda < 2` the pull overshoots
  :math:`\theta_0` and the distance alternates in sign while it shrinks:
  valid, as L2 Init itself does it, but rarely wanted. At
  :math:`\alpha\lambda = 2` the distance flips sign without shrinking and
  above 2 it grows every step (L2 Init diverges): both are refused.

  Under a preconditioner, ``optax.chain(optax.scale_by_adam(),
  multiscale(...))``, only the gradient is preconditioned: the step is
  :math:`\theta \leftarrow \theta - \alpha\, \mathrm{adam}(\nabla L) -
  \alpha\lambda(\theta - \theta_0)`, the *decoupled* form (as AdamW
  decouples weight decay, but toward :math:`\theta_0`), not Adam on the
  regularised loss, whose moments would also see :math:`\lambda(\theta -
  \theta_0)`. Likewise ``multiscale(..., learning_rate=schedule)`` scales
  the rates but not the decay, so the pull does not follow the schedule.

  Args:
    learning_rate: :math:`\alpha > 0`, finite.
    l2: :math:`\lambda \ge 0`, finite, with ``learning_rate * l2 < 2``.

  Returns:
    A :class:`MultiscaleSpec` on the state :math:`(\theta, \theta_0)`:
    rates :math:`(0, \alpha)` and decays :math:`(1, 1 - \alpha\lambda)`
    (one mode, rate :math:`\alpha` and decay 1, where the decay rounds
    to 1).

  Raises:
    TypeError: an argument is not a real scalar, or is traced.
    ValueError: ``learning_rate`` is not in :math:`(0, \infty)`, ``l2`` is
      not in :math:`[0, \infty)`, or ``learning_rate * l2`` :math:`\ge 2`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> spec = mso.from_l2_init(0.1, 0.5)
    >>> print(spec.decays, spec.learning_rates)
    [1.   0.95] [0.  0.1]
    >>> opt = mso.multiscale(spec.learning_rates, spec.decays)
    >>> params = jnp.array([1.0])  # theta_0
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([2.0]), state)
    >>> params = optax.apply_updates(params, updates)  # 1 - 0.1 * 2
    >>> updates, state = opt.update(jnp.array([0.0]), state)
    >>> print(optax.apply_updates(params, updates))  # 0.8 - 0.05 * (0.8 - 1)
    [0.81]

  References:
    Kumar, Marklund & Van Roy, `Maintaining Plasticity in Continual
    Learning via Regenerative Regularization
    <https://arxiv.org/abs/2308.11958>`_, 2023; Jones, `Learning at
    Multiple Timescales <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022,
    eq. (1) and §5.
  """
  checks.check_scalar(
      learning_rate, 'learning_rate', low=0.0, high=np.inf,
      low_inclusive=False)
  checks.check_scalar(l2, 'l2', low=0.0, high=np.inf)
  for value, name in ((learning_rate, 'learning_rate'), (l2, 'l2')):
    if checks.is_traced(value):
      raise TypeError(
          f'`{name}` must be concrete (not traced): the decay '
          '1 - learning_rate * l2 and the number of modes are fixed at '
          'construction.')
  alpha, strength = float(learning_rate), float(l2)
  pull = alpha * strength
  if not pull < 2.0:
    raise ValueError(
        f'`learning_rate * l2` must be < 2, got {alpha} * {strength} = '
        f'{pull}: the decay 1 - learning_rate * l2 must lie in (-1, 1]. At '
        '2 the distance to the initial params flips sign without '
        'shrinking; above 2 it grows every step (L2 Init diverges).')
  decay = float(np.float64(1.0) - np.float64(pull))
  if decay == 1.0:
    # No pull survives rounding: plain SGD, the slow weight is the weight.
    return MultiscaleSpec(
        learning_rates=np.array([alpha], np.float64),
        decays=np.array([1.0], np.float64),
        subweights_from_state=np.array([[1.0, 0.0]]),
        state_from_subweights=np.array([[1.0], [0.0]]),
    )
  return MultiscaleSpec(
      learning_rates=np.array([0.0, alpha], np.float64),
      decays=np.array([1.0, decay], np.float64),
      # Rows: the permanent part is theta_0, the decaying one theta - theta_0.
      subweights_from_state=np.array([[0.0, 1.0], [1.0, -1.0]]),
      # Columns: theta = theta_0 + omega, with theta_0 the permanent part.
      state_from_subweights=np.array([[1.0, 1.0], [1.0, 0.0]]),
  )


def _map_matrix(
    spec: MultiscaleSpec | BennaFusiModes, name: str) -> np.ndarray:
  matrix = getattr(spec, name)
  if checks.is_traced(matrix):
    raise TypeError(f'`spec.{name}` must be concrete (not traced).')
  return np.asarray(matrix, np.float64)


def _concrete_decays(spec: MultiscaleSpec | BennaFusiModes) -> np.ndarray:
  if checks.is_traced(spec.decays):
    raise TypeError('`spec.decays` must be concrete (not traced).')
  return np.asarray(spec.decays, np.float64)


def _combine(coefficients: np.ndarray, trees: Sequence[Any]) -> Any:
  """Per leaf: sum_k coefficients[k] * trees[k], in the leaves' dtype."""
  def combine_leaves(*leaves: Any) -> jax.Array:
    leaves = tuple(jnp.asarray(leaf) for leaf in leaves)
    stored_dtype = jnp.result_type(*leaves)
    dtype = precision.compute_dtype(stored_dtype)
    total = None
    for weight, leaf in zip(coefficients, leaves):
      if weight == 0.0:
        continue
      term = jnp.asarray(weight, dtype) * leaf.astype(dtype)
      total = term if total is None else total + term
    if total is None:
      total = jnp.zeros(leaves[0].shape, dtype)
    if not jnp.issubdtype(stored_dtype, jnp.inexact):
      return total.astype(stored_dtype)  # integer leaves are not trained
    return precision.round_to_storage(total, stored_dtype)
  return jax.tree.map(combine_leaves, *trees)


def state_to_subweights(
    spec: MultiscaleSpec | BennaFusiModes,
    state: BennaFusiState | Sequence[optax.Params],
) -> list[optax.Params | None]:
  r"""Subweights :math:`\omega = M s` of an optimizer state, per weight.

  Turns a running linear optimizer's state into ``initial_subweights`` for
  :func:`multiscale`, so training can switch forms mid-run exactly:

  .. math::

    \omega_{j} = \sum_k M_{jk}\, s_k,

  where :math:`M` is ``spec.subweights_from_state`` (:math:`V^{-1}` for a
  Benna–Fusi chain) and :math:`s_k` is ``state[k]``. Entries whose decay is
  exactly 1 come out as ``None``: :func:`multiscale` implies them from the
  params, which must equal :math:`\sum_j \omega_j` (= :math:`u_1` for a
  chain, :math:`w` for momentum).

  Args:
    spec: a :class:`MultiscaleSpec` or :class:`BennaFusiModes` with concrete
      values.
    state: a :class:`BennaFusiState`, or a sequence of :math:`m`
      params-shaped pytrees, one per state coordinate (e.g. ``[params,
      trace]`` for momentum, the chain :math:`u_1..u_n` for Benna–Fusi).

  Returns:
    A list with one entry per mode: a params-shaped pytree, or ``None``
    where the decay is 1.

  Raises:
    TypeError: ``spec`` is traced.
    ValueError: ``state`` has the wrong number of coordinates.

  Examples:
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> spec = mso.from_momentum(0.1, 0.9)
    >>> params, trace = jnp.array([1.0]), jnp.array([2.0])
    >>> slow, fast = mso.state_to_subweights(spec, [params, trace])
    >>> print(slow, fast)
    None [1.8]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eqs. (5) and (9).
  """
  matrix = _map_matrix(spec, 'subweights_from_state')
  decays = _concrete_decays(spec)
  coordinates = state.chain if isinstance(state, BennaFusiState) else state
  if isinstance(coordinates, dict) or not isinstance(coordinates, Sequence):
    raise TypeError(
        '`state` must be a BennaFusiState or a sequence of params-shaped '
        f'pytrees, got {type(state).__name__}.')
  if len(coordinates) != matrix.shape[1]:
    raise ValueError(
        f'`state` must have {matrix.shape[1]} coordinates (one per state '
        f'variable), got {len(coordinates)}.')
  return [
      None if decay == 1.0 else _combine(row, coordinates)
      for decay, row in zip(decays, matrix)
  ]


def subweights_to_state(
    spec: MultiscaleSpec | BennaFusiModes,
    params: optax.Params,
    subweights: Sequence[optax.Params | None],
) -> tuple[optax.Params, ...]:
  r"""An optimizer state :math:`s = V \omega` from multiscale subweights.

  The reverse of :func:`state_to_subweights`:

  .. math::

    s_k = \sum_j [V]_{kj}\, \omega_j, \qquad
    \omega_{slow} = w - \sum_{j:\, \gamma_j \ne 1} \omega_j,

  where :math:`V` is ``spec.state_from_subweights`` and a ``None`` entry
  (decay 1) is implied by ``params``. For a Benna–Fusi chain the result is
  ``initial_chain`` for :func:`benna_fusi`; with no leak,
  ``get_subweights(params, opt_state).values`` of the matching
  :func:`multiscale` is already in the modes' order.

  Args:
    spec: a :class:`MultiscaleSpec` or :class:`BennaFusiModes` with concrete
      values.
    params: the current params (the sum of all subweights).
    subweights: one entry per mode: a params-shaped pytree, or ``None`` for
      a mode with decay 1 (then computed from ``params``).

  Returns:
    A tuple of :math:`m` params-shaped pytrees, one per state coordinate.

  Raises:
    TypeError: ``spec`` is traced.
    ValueError: ``subweights`` has the wrong length, or a ``None`` entry's
      decay is not 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> spec = mso.from_momentum(0.1, 0.9)
    >>> params = jnp.array([1.0])
    >>> weight, trace = mso.subweights_to_state(
    ...     spec, params, [None, jnp.array([1.8])])
    >>> print(weight, trace)
    [1.] [2.]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, eqs. (5) and (9).
  """
  matrix = _map_matrix(spec, 'state_from_subweights')
  decays = _concrete_decays(spec)
  if isinstance(subweights, dict) or not isinstance(subweights, Sequence):
    raise TypeError(
        '`subweights` must be a sequence with one entry per mode, got '
        f'{type(subweights).__name__}.')
  if len(subweights) != len(decays):
    raise ValueError(
        f'`subweights` must have one entry per mode: {len(decays)} modes, '
        f'got {len(subweights)}.')
  missing = [j for j, value in enumerate(subweights) if value is None]
  for j in missing:
    if decays[j] != 1.0:
      raise ValueError(
          f'`subweights[{j}]` is None but its decay is {decays[j]}, not 1: '
          'only the non-decaying subweight is implied by the params.')
  given = [value for value in subweights if value is not None]
  values = list(subweights)
  if missing:
    implied = _combine(
        np.array([1.0] + [-1.0] * len(given)), [params, *given])
    for j in missing:
      values[j] = implied
      implied = jax.tree.map(jnp.zeros_like, implied)
  return tuple(_combine(row, values) for row in matrix)
