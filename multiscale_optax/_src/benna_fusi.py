r"""The Benna–Fusi synapse as an optimizer, and its modes (§4, Appendix).

Benna and Fusi's model synapse keeps, for every weight, a chain of variables
:math:`u_1, \dots, u_n` coupled to their neighbours like communicating
vessels; the gradient enters :math:`u_1` and the weight is read from
:math:`u_1`. Jones, `Learning at Multiple Timescales
<https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4 and the Appendix,
shows that the chain's transition matrix is diagonalisable with real
eigenvalues, so that in the eigenbasis (the *modes*) the chain is exactly a
multiscale learner: subweight :math:`\omega_i` has decay :math:`\lambda_i`
(the eigenvalue) and learning rate :math:`[V^{-1}]_{i1}/C_1`.

This module provides both forms:

* :func:`benna_fusi`: the chain itself, as an optax transformation.
* :func:`benna_fusi_modes`: the eigen-decomposition (through the symmetric
  matrix :math:`\Gamma` and ``jnp.linalg.eigh``), jit-compatible and
  differentiable with respect to the capacities and conductances, so that
  ``multiscale(modes.learning_rates, modes.decays)`` moves every weight
  exactly as ``benna_fusi`` does.

How the chain is stored, and why: the state holds the chain as a tuple of
:math:`n` params-shaped pytrees (``BennaFusiState.chain[k]`` is
:math:`u_{k+1}` of every weight). A tuple of params-shaped trees follows the
params' sharding without any extra partition spec (a stacked leading axis
would need one). Speed does not favour either layout: a stacked
``(n, *shape)`` array updated by a matrix product or by shifted slices
measured the same step time as the tuple (about 67 ms for n = 8 at
:math:`4 \cdot 10^6` float32 params on 2 CPU cores). In every layout each
new variable reads its neighbours' old values, so XLA copies every donated
chain buffer before updating it in place; the multiscale form (each subweight
reads only itself) avoids those copies and stores one variable fewer when
there is no leak (its slow mode is implied by the params), which is why
``multiscale(modes.learning_rates, modes.decays)`` is the faster way to run
the same dynamics (``benchmarks/benna_fusi_speed.py``).
"""

from __future__ import annotations

import warnings
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
from multiscale_optax._src import subweight_state

# Above this condition number of V, the state maps u <-> omega are badly
# scaled (norm-wise error bound cond(V) * eps, ~0.1 in float32), so
# benna_fusi_modes warns when its inputs are concrete.
CONDITION_WARNING_THRESHOLD = 1e6


class BennaFusiModes(NamedTuple):
  r"""Modes of a Benna–Fusi chain, as returned by :func:`benna_fusi_modes`.

  Modes are sorted from the slowest (largest decay) to the fastest. With no
  leak the first mode is the stateless slow weight: its decay is exactly
  ``1.0`` and its eigenvector is :math:`(1, \dots, 1)`.

  Attributes:
    learning_rates: :math:`\alpha_i = \eta\,[V^{-1}]_{i1}/C_1`, one per mode
      (all positive; they sum to :math:`\eta / C_1`).
    decays: :math:`\lambda_i`, the eigenvalues of the transition matrix
      :math:`T`, in :math:`(-1, 1]`, descending.
    eigenvectors: :math:`V` (shape ``(n, n)``), column :math:`i` is mode
      :math:`i`, scaled so that :math:`V_{1i} = 1`; a chain state is
      :math:`u = V\omega`.
    inverse_eigenvectors: :math:`V^{-1}`; subweights are
      :math:`\omega = V^{-1} u`.
    condition_number: :math:`\kappa(V) = \|V\|_2 \|V^{-1}\|_2` (``inf``
      where :math:`V` is not finite).
  """

  learning_rates: jax.Array
  decays: jax.Array
  eigenvectors: jax.Array
  inverse_eigenvectors: jax.Array
  condition_number: jax.Array

  @property
  def subweights_from_state(self) -> jax.Array:
    """:math:`V^{-1}`: maps a chain state to subweights (state-map name)."""
    return self.inverse_eigenvectors

  @property
  def state_from_subweights(self) -> jax.Array:
    """:math:`V`: maps subweights to a chain state (state-map name)."""
    return self.eigenvectors


class BennaFusiState(NamedTuple):
  """State of :func:`benna_fusi`.

  Attributes:
    count: number of updates applied so far (``int32``), read by a
      learning-rate schedule.
    chain: :math:`(u_1, \\dots, u_n)`, one params-shaped pytree per chain
      variable; ``chain[0]`` is :math:`u_1`, which the params track.
  """

  # The field shadows tuple.count, as in optax's own states (its name is
  # what inject_hyperparams and users look for).
  count: jax.Array  # type: ignore[assignment]
  chain: tuple[optax.Params, ...]


def benna_fusi_defaults(num_variables: int) -> tuple[np.ndarray, np.ndarray]:
  r"""Benna & Fusi's (2016) default capacities and conductances.

  .. math::

    C_k = 2^{k-1} \quad (k = 1..n), \qquad
    g_k = 2^{-k-2} \quad (k = 1..n-1),

  where :math:`n` is ``num_variables``: each variable is twice as large and
  half as strongly coupled as the previous one, so timescales grow
  geometrically along the chain.

  Args:
    num_variables: :math:`n \ge 1`, the length of the chain.

  Returns:
    ``(capacities, conductances)``: float64 NumPy arrays of lengths
    :math:`n` and :math:`n - 1`.

  Raises:
    TypeError: ``num_variables`` is not an int.
    ValueError: ``num_variables < 1``.

  Examples:
    >>> import multiscale_optax as mso
    >>> capacities, conductances = mso.benna_fusi_defaults(3)
    >>> print(capacities, conductances)
    [1. 2. 4.] [0.125  0.0625]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4; Benna & Fusi,
    Computational principles of synaptic memory consolidation, Nature
    Neuroscience 19, 2016.
  """
  num_variables = checks.check_integer(num_variables, 'num_variables', low=1)
  k = np.arange(1, num_variables + 1, dtype=np.float64)
  return 2.0 ** (k - 1.0), 2.0 ** (-k[:-1] - 2.0)


def _conductance_entries(
    conductances: Any, num_variables: int) -> tuple[Any, ...]:
  empty = (
      isinstance(conductances, Sequence) and not isinstance(
          conductances, str | bytes) and len(conductances) == 0
  ) or (
      isinstance(conductances, np.ndarray | jax.Array)
      and conductances.ndim == 1 and conductances.shape[0] == 0)
  entries = () if empty else checks.vector_entries(
      conductances, 'conductances')
  if len(entries) != num_variables - 1:
    raise ValueError(
        '`conductances` must hold the n - 1 couplings g_1..g_{n-1} between '
        f'neighbours: {num_variables} capacities need {num_variables - 1} '
        f'conductances, got {len(entries)}.')
  return entries


def _check_stability(
    capacities: np.ndarray, conductances: np.ndarray, leak: float) -> None:
  """Raises unless every eigenvalue of the (concrete) transition is > -1."""
  gamma = _symmetric_transition(
      np.asarray(capacities), np.asarray(conductances), np.asarray(leak), np)
  smallest = float(np.linalg.eigvalsh(gamma)[0])
  if smallest <= -1.0:
    outflow = (np.r_[0.0, conductances] + np.r_[conductances, leak]) / (
        capacities)
    worst = int(np.argmax(outflow))
    raise ValueError(
        'The explicit Benna–Fusi update is unstable: the transition matrix '
        f'has the eigenvalue {smallest:.6g} <= -1 (the chain would '
        'oscillate with growing amplitude). `conductances` (and `leak`) are '
        'too large relative to `capacities`: variable '
        f'{worst + 1} loses (g_{{k-1}} + g_k)/C_k = {outflow[worst]:.6g} of '
        'its content per step; decrease `conductances`/`leak` or increase '
        '`capacities` so that every eigenvalue exceeds -1 (outflows below 1 '
        'suffice).')


def _chain_parameters(
    capacities: Any, conductances: Any, leak: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...], Any, bool]:
  """Validates the chain's parameters; returns entries and concreteness."""
  capacity_entries = checks.vector_entries(capacities, 'capacities')
  conductance_entries = _conductance_entries(
      conductances, len(capacity_entries))
  checks.check_finite(capacity_entries, 'capacities')
  checks.check_finite(conductance_entries, 'conductances')
  checks.check_range(
      capacity_entries, 'capacities', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
  checks.check_range(
      conductance_entries, 'conductances', low=0.0, high=np.inf,
      low_inclusive=False, high_inclusive=False)
  checks.check_scalar(
      leak, 'leak', low=0.0, high=np.inf, high_inclusive=False)
  concrete = not any(
      checks.is_traced(entry)
      for entry in (*capacity_entries, *conductance_entries, leak))
  if concrete:
    _check_stability(
        np.asarray(capacity_entries, np.float64),
        np.asarray(conductance_entries, np.float64), float(leak))
  return capacity_entries, conductance_entries, leak, concrete


def _as_vector(
    entries: tuple[Any, ...], original: Any, dtype: DTypeLike) -> jax.Array:
  if isinstance(original, jax.Array):
    return original.astype(dtype)
  if not entries:
    return jnp.zeros((0,), dtype)
  return jnp.stack([jnp.asarray(entry, dtype) for entry in entries])


def _symmetric_transition(
    capacities: Any, conductances: Any, leak: Any, xnp: Any) -> Any:
  # ``xnp`` is numpy or jax.numpy, and the arrays are of that module.
  r"""Γ of eqs. (14)-(15): :math:`B T B^{-1}` with :math:`B^2 = C/C_1`."""
  zero = xnp.zeros((1,), capacities.dtype)
  inflow = xnp.concatenate([zero, conductances])  # g_{k-1}, g_0 = 0
  outflow = xnp.concatenate([conductances, xnp.reshape(leak, (1,))])  # g_k
  diagonal = 1.0 - (inflow + outflow) / capacities
  # g / sqrt(C_{k-1}) / sqrt(C_k), not g / sqrt(C_{k-1} C_k): the product of
  # two capacities underflows for tiny ones (1e-310 gave NaN modes) and
  # overflows for huge ones (an off-diagonal of 0), while each ratio is
  # representable whenever the chain's coupling rates are.
  roots = xnp.sqrt(capacities)
  off_diagonal = conductances / roots[:-1] / roots[1:]
  return (xnp.diag(diagonal) + xnp.diag(off_diagonal, 1)
          + xnp.diag(off_diagonal, -1))


def _check_representable(
    eigenvalues: np.ndarray, leak: float, dtype: DTypeLike) -> None:
  """Raises unless the (concrete) decays are finite and distinguishable.

  Without a leak exactly one eigenvalue is 1 (the conserved mode); with a
  leak none is. Any other eigenvalue that rounds to 1 (or above) belongs to
  a mode whose relaxation rate :math:`1 - \\lambda` is below the dtype's
  resolution near 1: as a decay it would be a second permanent subweight
  (or make a leaky chain lossless), which the chain is not.
  """
  if not np.all(np.isfinite(eigenvalues)):
    raise ValueError(
        'benna_fusi_modes: the transition matrix has non-finite eigenvalues '
        f'{eigenvalues.tolist()} in {np.dtype(dtype).name}: a ratio '
        'g_k / C_k or g_k / sqrt(C_k C_{k+1}) is not representable. Rescale '
        '`capacities`, `conductances` and `leak` together (the dynamics '
        'depend only on their ratios).')
  slow = eigenvalues[1:] if leak == 0.0 else eigenvalues
  if np.any(slow >= 1.0):
    eps = float(jnp.finfo(dtype).eps)
    raise ValueError(
        'benna_fusi_modes: a mode of this chain relaxes more slowly than '
        f'{np.dtype(dtype).name} can represent: its decay 1 - (1 - lambda) '
        f'rounds to 1 because 1 - lambda < {eps / 2:.3g} (half the '
        'spacing of floats below 1), which would turn it into a second '
        'permanent subweight' + (' (or drop the leak)' if leak else '') +
        '. The modes form works for chains whose every timescale other '
        f'than the conserved one is below about {1 / eps:.3g} steps (e.g. '
        'benna_fusi_defaults(n) for n <= 28 in float64, n <= 13 in '
        'float32): use a shorter chain, larger conductances (or leak), or '
        'float64 (jax.enable_x64). benna_fusi itself runs any such chain.')


def benna_fusi_modes(
    capacities: Sequence[float] | ArrayLike,
    conductances: Sequence[float] | ArrayLike,
    *,
    learning_rate: ArrayLike = 1.0,
    leak: ArrayLike = 0.0,
) -> BennaFusiModes:
  r"""Modes of a Benna–Fusi chain: its exact multiscale form (Appendix).

  The chain :math:`u_{t+1} = T u_t - d_t` (eqs. 2–3; see :func:`benna_fusi`)
  is symmetrised as :math:`\Gamma = B T B^{-1}` with
  :math:`B = \mathrm{diag}(\sqrt{C_k / C_1})`:

  .. math::

    \Gamma_{kk} = 1 - \frac{g_{k-1} + g_k}{C_k}, \qquad
    \Gamma_{k-1,k} = \Gamma_{k,k-1} = \frac{g_{k-1}}{\sqrt{C_{k-1} C_k}},

  with :math:`g_0 = 0` and :math:`g_n` the ``leak``. ``jnp.linalg.eigh``
  gives :math:`\Gamma = \Psi \Lambda \Psi^\top`; then
  :math:`V = B^{-1}\Psi D^{-1}` and
  :math:`V^{-1} = D \Psi^\top B` with :math:`D = \mathrm{diag}(\Psi_{1i})`
  (so :math:`V_{1i} = 1`, and :math:`V^{-1}` needs no matrix inverse). In the
  coordinates :math:`\omega = V^{-1} u` the chain is the multiscale learner

  .. math::

    \omega_{i,t+1} = \lambda_i\, \omega_{i,t} - \alpha_i\, \partial_w
    \mathcal{L}, \qquad \alpha_i = \eta\, \frac{[V^{-1}]_{i1}}{C_1}
    = \eta\, \frac{\Psi_{1i}^2}{C_1}, \qquad u_1 = \sum_i \omega_i,

  where :math:`C_k` is ``capacities[k-1]``, :math:`g_k` is
  ``conductances[k-1]`` and :math:`\eta` is ``learning_rate``. So
  ``multiscale(modes.learning_rates, modes.decays)`` moves every weight
  exactly as ``benna_fusi(capacities, conductances, learning_rate=...,
  leak=...)``.

  With no leak, :math:`\sum_k C_k u_k` is conserved and one eigenvalue is
  exactly 1; ``eigh`` returns it up to rounding (e.g. :math:`1 - 10^{-16}`),
  so where ``leak == 0`` the largest eigenvalue is set to exactly ``1.0``
  (an exact statement, not a tolerance), and ``multiscale`` treats that mode
  as its stateless slow weight. With a leak every eigenvalue is below 1.

  The function is jit-compatible (for a fixed :math:`n`) and differentiable
  with respect to ``capacities``, ``conductances``, ``leak`` and
  ``learning_rate`` (the eigenvalues of a chain with positive couplings are
  distinct, so ``eigh``'s derivative exists). It computes in the inputs'
  floating dtype: enable ``jax.enable_x64`` for float64 accuracy.

  Conditioning: ``condition_number`` reports :math:`\kappa(V)`. Where the
  inputs are concrete and :math:`\kappa(V) >` ``1e6``
  (``CONDITION_WARNING_THRESHOLD``) or :math:`V` is not finite, a
  ``UserWarning`` says that the state maps :math:`u \leftrightarrow \omega`
  are badly scaled: the norm-wise bound on how a relative perturbation of
  :math:`u` (e.g. float32 rounding) moves :math:`\omega` is
  :math:`\kappa(V)\,\epsilon` (about 0.1 in float32 at the threshold).
  Because :math:`V^{-1}` is formed from :math:`\Psi` without a matrix
  inverse, the round trip :math:`u \to \omega \to u` itself stays
  accurate to rounding while :math:`V` is finite (measured
  :math:`\sim 10^{-16}` at :math:`\kappa(V) = 3 \cdot 10^6` in float64).
  :math:`V` stops being finite for long default chains: the first
  components of the slowest eigenvectors shrink super-exponentially with
  :math:`n` and underflow (float64: :math:`n \ge 26`), so
  :math:`V_{1i} = 1` cannot be imposed; ``condition_number`` is then
  ``inf`` and the state maps are unusable. The learning rates and decays
  stay finite (such modes get learning rates that are zero to working
  precision), so the weight trajectories still agree.

  Args:
    capacities: :math:`C_1, \dots, C_n > 0`, :math:`n \ge 1`.
    conductances: :math:`g_1, \dots, g_{n-1} > 0`, the couplings between
      neighbours (empty for :math:`n = 1`).
    learning_rate: :math:`\eta`, the gradient's coefficient in eq. (2).
    leak: :math:`g_n \ge 0`, the flow from :math:`u_n` to a fixed zero.

  Returns:
    A :class:`BennaFusiModes` (modes sorted by decreasing decay).

  Raises:
    TypeError: an argument has the wrong type.
    ValueError: (concrete inputs) a capacity or conductance is not positive
      and finite, ``leak`` is negative, ``learning_rate`` is not finite,
      the lengths do not match, the explicit update is unstable (an
      eigenvalue :math:`\le -1`), an input is subnormal in the compute
      dtype (XLA flushes it to zero), or a decay other than the conserved
      mode's rounds to 1 (a timescale beyond :math:`1/\epsilon` steps:
      about :math:`4.5 \cdot 10^{15}` in float64, :math:`8.4 \cdot 10^6`
      in float32; ``benna_fusi_defaults(n)`` works for :math:`n \le 28`
      and :math:`n \le 13` respectively). Traced inputs (under
      ``jax.jit``) cannot be checked, and no warning is issued for them.

  Examples:
    >>> import jax.numpy as jnp
    >>> import multiscale_optax as mso
    >>> capacities, conductances = mso.benna_fusi_defaults(4)
    >>> modes = mso.benna_fusi_modes(capacities, conductances)
    >>> print(modes.decays[0], modes.decays.shape)
    1.0 (4,)
    >>> bool(jnp.allclose(modes.eigenvectors[0], 1.0))
    True
    >>> bool(jnp.isclose(modes.learning_rates.sum(), 1.0))
    True

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4 and Appendix
    (eqs. 11–16).
  """
  capacity_entries, conductance_entries, leak, _ = _chain_parameters(
      capacities, conductances, leak)
  checks.check_scalar(learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  dtype = jnp.result_type(
      float, *(jnp.asarray(e).dtype for e in (
          capacity_entries[0], *conductance_entries[:1], leak,
          learning_rate)))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  tiny = float(jnp.finfo(dtype).tiny)
  for name, entries in (('capacities', capacity_entries),
                        ('conductances', conductance_entries),
                        ('leak', (leak,))):
    for position, entry in enumerate(entries):
      if not checks.is_traced(entry) and 0.0 < float(entry) < tiny:
        where = name if name == 'leak' else f'{name}[{position}]'
        raise ValueError(
            f'`{where}` = {float(entry):.3g} is below the smallest normal '
            f'{np.dtype(dtype).name} ({tiny:.3g}), which XLA flushes to '
            'zero. The modes depend only on the ratios of capacities, '
            'conductances and leak: multiply all three by a common factor.')
  capacity_vector = _as_vector(capacity_entries, capacities, dtype)
  conductance_vector = _as_vector(conductance_entries, conductances, dtype)
  leak_value = jnp.asarray(leak, dtype)
  gamma = _symmetric_transition(
      capacity_vector, conductance_vector, leak_value, jnp)
  eigenvalues, psi = jnp.linalg.eigh(gamma)
  # Slowest mode first, so that get_subweights' order (slow part first)
  # matches the modes' order when there is no leak.
  eigenvalues = eigenvalues[::-1]
  psi = psi[:, ::-1]
  if not checks.is_traced(eigenvalues):
    _check_representable(np.asarray(eigenvalues), float(leak_value), dtype)
  # With no leak, the top eigenvalue is exactly 1 (conservation of sum C u).
  eigenvalues = eigenvalues.at[0].set(
      jnp.where(leak_value == 0, jnp.ones((), dtype), eigenvalues[0]))
  sqrt_b = jnp.sqrt(capacity_vector / capacity_vector[0])
  first = psi[0]
  eigenvectors = psi / first[None, :] / sqrt_b[:, None]
  # V_1i = 1 exactly (b_1 = 1); XLA may divide via a reciprocal.
  eigenvectors = eigenvectors.at[0].set(1.0)
  inverse_eigenvectors = first[:, None] * psi.T * sqrt_b[None, :]
  learning_rates = (
      jnp.asarray(learning_rate, dtype) * first**2 / capacity_vector[0])
  finite = jnp.all(jnp.isfinite(eigenvectors))
  safe_vectors = jnp.where(finite, eigenvectors, jnp.eye(len(first)))
  condition_number = jnp.where(
      finite, jnp.linalg.cond(safe_vectors), jnp.inf)
  modes = BennaFusiModes(
      learning_rates=learning_rates,
      decays=eigenvalues,
      eigenvectors=eigenvectors,
      inverse_eigenvectors=inverse_eigenvectors,
      condition_number=condition_number,
  )
  # Only where the value is concrete: under jax.jit even Python-list inputs
  # give a traced condition number, and float() of it would raise.
  if not checks.is_traced(condition_number):
    condition = float(condition_number)
    if not condition <= CONDITION_WARNING_THRESHOLD:
      warnings.warn(
          'benna_fusi_modes: the eigenvector matrix V has condition number '
          f'{condition:.3g} > {CONDITION_WARNING_THRESHOLD:.0e} (inf: V is not '
          'finite because the first components of slow eigenvectors '
          'underflowed). The state maps between chain states and subweights '
          'are badly scaled (perturbations grow by up to cond(V)) or, if V '
          'is not finite, unusable; the learning rates and decays remain '
          'usable.',
          UserWarning, stacklevel=2)
  return modes


def _flow_rates(
    capacity_entries: tuple[Any, ...], conductance_entries: tuple[Any, ...],
    leak: Any, concrete: bool,
) -> tuple[tuple[Any, ...], tuple[Any, ...], Any]:
  """Per variable k: inflow g_{k-1}/C_k, outflow g_k/C_k; and 1/C_1.

  In float64 where concrete, so slow variables keep their small
  coefficients exactly.
  """
  if concrete:
    c = np.asarray(capacity_entries, np.float64)
    g = np.asarray(conductance_entries, np.float64)
    inflow = tuple(float(x) for x in np.r_[0.0, g] / c)
    outflow = tuple(float(x) for x in np.r_[g, float(leak)] / c)
    return inflow, outflow, float(1.0 / c[0])
  inflow = tuple(
      conductance / capacity for conductance, capacity in zip(
          (0.0, *conductance_entries), capacity_entries, strict=True))
  outflow = tuple(
      conductance / capacity for conductance, capacity in zip(
          (*conductance_entries, leak), capacity_entries, strict=True))
  return inflow, outflow, 1.0 / capacity_entries[0]


def _chain_leaf_update(
    update: jax.Array, stored: list[jax.Array], rate: Any,
    inflow: Sequence[Any], outflow: Sequence[Any], input_scale: Any,
) -> tuple[jax.Array, list[jax.Array]]:
  """One leaf's increment of u_1 and its new chain u_1..u_n."""
  if not subweight_state.is_trainable(
      update.dtype, *(leaf.dtype for leaf in stored)):
    # Integer and boolean leaves (counters, masks) are left alone.
    return jnp.zeros_like(update), stored
  compute_dtype = precision.compute_dtype(
      update.dtype, *(leaf.dtype for leaf in stored))
  # The chain's coefficients are real, also for complex params.
  real_dtype = jnp.finfo(compute_dtype).dtype
  old = [leaf.astype(compute_dtype) for leaf in stored]
  num_variables = len(stored)
  new_stored = []
  for k in range(num_variables):
    change = jnp.asarray(outflow[k], real_dtype) * (
        (old[k + 1] if k + 1 < num_variables else 0.0) - old[k])
    if k > 0:
      change = change + jnp.asarray(inflow[k], real_dtype) * (
          old[k - 1] - old[k])
    else:
      change = change - (
          jnp.asarray(rate, real_dtype)
          * jnp.asarray(input_scale, real_dtype)
          * update.astype(compute_dtype))
      first_change = change
    # Rounds explicitly (XLA:GPU would otherwise keep excess precision
    # and the increment below would not be the change actually stored).
    new_stored.append(
        precision.round_to_storage(old[k] + change, stored[k].dtype))
  if stored[0].dtype == compute_dtype:
    increment = first_change
  else:
    # The params follow the stored u_1 exactly: its stored change.
    increment = new_stored[0].astype(compute_dtype) - old[0]
  return increment.astype(update.dtype), new_stored


def benna_fusi(
    capacities: Sequence[float] | ArrayLike,
    conductances: Sequence[float] | ArrayLike,
    *,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    leak: float = 0.0,
    initial_chain: Sequence[optax.Params | None] | None = None,
    state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Benna–Fusi synapse (eqs. 2–3) as an optax transformation.

  Every weight is backed by a chain :math:`u_1, \dots, u_n` of variables
  with capacities :math:`C_k` (``capacities[k-1]``) and couplings
  :math:`g_k` (``conductances[k-1]``) between neighbours. All variables are
  updated simultaneously from the previous state:

  .. math::

    C_1 (u_{1,t+1} - u_{1,t}) &= g_1 (u_{2,t} - u_{1,t})
      - \eta_t\, \partial_w \mathcal{L}, \\
    C_k (u_{k,t+1} - u_{k,t}) &= g_{k-1} (u_{k-1,t} - u_{k,t})
      + g_k (u_{k+1,t} - u_{k,t}), \qquad 2 \le k \le n,

  with :math:`g_n` the ``leak`` and :math:`u_{n+1} \equiv 0`;
  :math:`\eta_t` is ``learning_rate`` (a constant or a schedule of the step
  count) and :math:`\partial_w \mathcal{L}` the incoming update (a gradient
  or a preconditioned direction). The returned increment is
  :math:`u_{1,t+1} - u_{1,t}`, so ``optax.apply_updates`` makes the params
  follow :math:`w = u_1` (the params must equal :math:`u_1` initially,
  which holds by default: every chain variable starts at the initial
  weight).

  Equivalence (§4): with ``modes = benna_fusi_modes(capacities,
  conductances, leak=leak)``, the transformation
  ``multiscale(modes.learning_rates, modes.decays,
  learning_rate=learning_rate)`` produces the same parameter
  trajectory; to continue a running chain in that form pass
  ``initial_subweights=state_to_subweights(modes, state)``.

  State memory: :math:`n` params-shaped pytrees (``BennaFusiState.chain``),
  one per chain variable, in ``state_dtype``; the multiscale form needs
  :math:`n - 1` when there is no leak.

  Default parameters (Benna & Fusi 2016): ``benna_fusi_defaults(n)``.

  Args:
    capacities: :math:`C_1, \dots, C_n > 0`, :math:`n \ge 1`.
    conductances: :math:`g_1, \dots, g_{n-1} > 0` (empty for :math:`n=1`).
    learning_rate: :math:`\eta`, a scalar or an ``optax.Schedule``.
    leak: :math:`g_n \ge 0`, the flow from :math:`u_n` to zero.
    initial_chain: optional, :math:`n` entries, each a params-shaped pytree
      (the initial :math:`u_k`) or ``None`` (the initial params). Entry 0
      should equal the params, which track :math:`u_1` by increments.
      ``init`` checks each entry's tree structure and leaf shapes against
      the params (no broadcasting) and stores copies, so donating the state
      never deletes the caller's arrays.
    state_dtype: dtype of the stored chain (``None``: each param's dtype):
      float16, bfloat16, float32, float64, or for complex params complex64
      or complex128 (narrower float8 formats are refused). Arithmetic runs
      in at least float32 (``precision.compute_dtype``); storing in a
      narrower dtype rounds explicitly (``precision.round_to_storage``), so
      the params follow the stored :math:`u_1` exactly on every backend.
      Updates keep the incoming dtype.

  Leaves: complex params train a complex chain (the coefficients are real,
  so real and imaginary parts evolve as two real chains); integer and
  boolean params are left alone (their chain holds zeros of their dtype and
  their updates are zero), as :func:`multiscale` does; Python floats train
  as 0-d arrays.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`BennaFusiState`.

  Raises:
    TypeError: an argument has the wrong type, ``state_dtype`` is not a
      storage dtype, or (at ``init``) a real ``state_dtype`` meets complex
      params (it would drop the imaginary part), a complex one real params.
    ValueError: a capacity or conductance is not positive and finite,
      ``leak`` is negative, ``learning_rate`` is not finite, the lengths do
      not match, ``initial_chain`` has the wrong length (or, at ``init``, an
      entry's structure or shapes differ from the params), or the explicit
      update is unstable (an eigenvalue of the transition matrix
      :math:`\le -1`, i.e. conductances too large relative to capacities).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multiscale_optax as mso
    >>> capacities, conductances = mso.benna_fusi_defaults(3)
    >>> opt = mso.benna_fusi(capacities, conductances, learning_rate=0.5)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.ones(2), state)
    >>> print(optax.apply_updates(params, updates))
    [-0.5 -0.5]
    >>> updates, state = opt.update(jnp.zeros(2), state)
    >>> print(state.chain[1])  # u_2 moved by g_1 (u_1 - u_2) / C_2
    [-0.03125 -0.03125]

  References:
    Jones, `Learning at Multiple Timescales
    <https://arxiv.org/abs/2211.10311>`_, NeurIPS 2022, §4, eqs. (2)–(3);
    Benna & Fusi, Nature Neuroscience 19, 2016.
  """
  capacity_entries, conductance_entries, leak, concrete = _chain_parameters(
      capacities, conductances, leak)
  if not callable(learning_rate):
    checks.check_scalar(
        learning_rate, 'learning_rate', low=-np.inf, high=np.inf)
  checks.check_state_dtype(state_dtype, 'state_dtype')
  num_variables = len(capacity_entries)
  checks.check_tree_per_entry(
      initial_chain, 'initial_chain', num_variables, 'chain variable',
      'capacities')

  inflow, outflow, input_scale = _flow_rates(
      capacity_entries, conductance_entries, leak, concrete)

  def init_fn(params: optax.Params) -> BennaFusiState:
    params = jax.tree.map(jnp.asarray, params)
    chain = []
    for k in range(num_variables):
      value = None if initial_chain is None else initial_chain[k]
      if value is not None:
        subweight_state.check_params_shaped(
            value, params, f'initial_chain[{k}]')
      source = params if value is None else value
      chain.append(jax.tree.map(
          lambda leaf, param: subweight_state.initial_leaf(
              param, [leaf], state_dtype),
          source, params))
    return BennaFusiState(
        count=jnp.zeros([], jnp.int32), chain=tuple(chain))

  def update_fn(
      updates: optax.Updates,
      state: BennaFusiState,
      params: optax.Params | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, BennaFusiState]:
    del params, extra_args
    if len(state.chain) != num_variables:
      raise ValueError(
          f'The state holds {len(state.chain)} chain variables, but this '
          f'transformation has {num_variables}.')
    rate = (learning_rate(state.count) if callable(learning_rate)
            else learning_rate)
    increments, new_chain = subweight_state.map_leaves(
        lambda update, stored: _chain_leaf_update(
            update, stored, rate, inflow, outflow, input_scale),
        updates, state.chain)
    new_state = BennaFusiState(
        count=jnp.asarray(optax.safe_increment(state.count)), chain=new_chain)
    return increments, new_state

  # optax's protocols take any OptState; update_fn takes its own state.
  return optax.GradientTransformationExtraArgs(
      init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn))
