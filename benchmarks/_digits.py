r"""The digits streams and models every digits benchmark runs on.

scikit-learn's bundled ``load_digits`` (8x8 images, 10 classes; shipped in
the wheel, no download), the four streams of ``online_digits`` (recurring
tasks, 1/f task switches, stationary, 1/f rotation), the image rotation they
and ``online_rotation`` use, and the two models (an MLP 64-64-10 and a small
CNN), in pure JAX so that seeds and hyperparameters vmap. A library module:
the scripts ``online_digits``, ``online_rotation``, ``fisher_observations``,
``step_speed`` and ``plasticity`` import it; it imports no script.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

# New streams go at the end: a stream's random draws are seeded by its index.
STREAMS = ('recurring', 'one_over_f', 'stationary', 'rotation')
NUM_CLASSES = 10
NUM_TASKS = 3  # label permutations; the recurring stream uses the first two
IMAGE_SIZE = 8
# The rotation stream's angle: a sum of AR(1) processes with these
# timescales (steps) and equal stationary variances, total sd in degrees.
ROTATION_TIMESCALES = tuple(float(t) for t in np.geomspace(1.0, 1000.0, 7))
ROTATION_SD_DEGREES = 45.0


# ---------------------------------------------------------------------------
# Models (pure JAX, so that seeds and learning rates vmap).


def dense_init(key, fan_in, fan_out):
  return {
      'w': jax.random.normal(key, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in),
      'b': jnp.zeros(fan_out),
  }


def mlp_init(key):
  first, second = jax.random.split(key)
  return {'hidden': dense_init(first, 64, 64),
          'out': dense_init(second, 64, NUM_CLASSES)}


def mlp_apply(params, images):
  hidden = jax.nn.relu(images @ params['hidden']['w'] + params['hidden']['b'])
  return hidden @ params['out']['w'] + params['out']['b']


def cnn_init(key):
  keys = jax.random.split(key, 3)
  return {
      'conv1': jax.random.normal(keys[0], (9, 4)) * jnp.sqrt(2.0 / 9),
      'conv2': jax.random.normal(keys[1], (3, 3, 4, 8)) * jnp.sqrt(2.0 / 36),
      'out': dense_init(keys[2], 4 * 4 * 8, NUM_CLASSES),
  }


def _patches(images, stride):
  """3x3 patches (zero padding 1) as a matmul operand (im2col).

  Vmapped over params, a matmul stays a batched matmul, where a convolution
  would become a grouped convolution (4x slower here on CPU).
  """
  height = images.shape[1]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  shifted = [
      padded[:, row:row + height:stride, col:col + height:stride, :]
      for row in range(3) for col in range(3)]
  return jnp.concatenate(shifted, axis=-1)  # (batch, h, w, 9 * channels)


def _conv(images, kernel, stride):
  return _patches(images, stride) @ kernel.reshape(-1, kernel.shape[-1])


def cnn_inputs(images):
  """The first layer's 3x3 patches, computed once for the whole data set
  (they do not depend on the params)."""
  return _patches(jnp.asarray(images).reshape(-1, 8, 8, 1), 1)


def cnn_apply(params, patches):
  """3x3 conv (4 channels) -> 3x3 conv stride 2 (8 channels) -> linear;
  ``patches`` come from :func:`cnn_inputs`."""
  hidden = jax.nn.relu(patches @ params['conv1'])
  hidden = jax.nn.relu(_conv(hidden, params['conv2'], 2))
  hidden = hidden.reshape(hidden.shape[0], -1)
  return hidden @ params['out']['w'] + params['out']['b']


MODELS = {
    'mlp': (mlp_init, mlp_apply, jnp.asarray),
    'cnn': (cnn_init, cnn_apply, cnn_inputs),
}


# ---------------------------------------------------------------------------
# Streams.


def _one_over_f_tasks(rng, steps, shortest=8):
  r"""Task ids with power-law segment durations.

  Durations have density :math:`\propto d^{-2}` on [``shortest``,
  ``steps``]; at each segment end the task jumps to one of the other tasks.
  A renewal process with this duration law has a 1/f spectrum (Eliazar &
  Klafter, PNAS 2009, the paper's [EK09]), so there are shifts at every
  timescale and old tasks recur after gaps of every length.
  """
  tasks = []
  task = int(rng.integers(NUM_TASKS))
  while len(tasks) < steps:
    uniform = rng.uniform()
    duration = 1.0 / (1.0 / shortest - uniform * (1.0 / shortest - 1.0 / steps))
    tasks += [task] * round(duration)
    task = (task + int(rng.integers(1, NUM_TASKS))) % NUM_TASKS
  return np.asarray(tasks[:steps])


def rotation_angles(rng: np.random.Generator, steps: int,
                    timescales=ROTATION_TIMESCALES,
                    sd_degrees=ROTATION_SD_DEGREES) -> np.ndarray:
  r"""A rotation angle (radians) per step that drifts as 1/f noise.

  :math:`\theta_t = \sum_j z_{j,t}` with independent AR(1) components
  :math:`z_{j,t+1} = \rho_j z_{j,t} + \epsilon_{j,t}`,
  :math:`\rho_j = e^{-1/\tau_j}`, each started from and kept at its
  stationary variance :math:`s = \sigma^2 / m` (:math:`m` components,
  :math:`\sigma` = ``sd_degrees``): equal variance per log-spaced timescale,
  an approximately 1/f spectrum between :math:`1/\tau_{max}` and
  :math:`1/\tau_{min}` (as ``multiscale_optax.OneOverFEnvironment``).
  """
  timescales = np.asarray(timescales, np.float64)
  decays = np.exp(-1.0 / timescales)
  variance = np.deg2rad(sd_degrees) ** 2 / len(timescales)
  components = rng.normal(0.0, np.sqrt(variance), len(timescales))
  innovations = rng.normal(0.0, 1.0, (steps, len(timescales))) * np.sqrt(
      variance * (1.0 - decays ** 2))
  angles = np.empty(steps)
  for step in range(steps):
    angles[step] = components.sum()
    components = decays * components + innovations[step]
  return angles


def rotation_matrix(angle: jax.Array, dtype=jnp.float32) -> jax.Array:
  """The (64, 64) bilinear-interpolation matrix that rotates a flattened
  8x8 image counterclockwise by ``angle`` radians about its centre, zero
  outside the image: ``rotated = image @ matrix.T``.

  A matmul rather than a gather, so that it stays cheap when vmapped over
  seeds and learning rates (as the CNN's patches do)."""
  centre = (IMAGE_SIZE - 1) / 2.0
  rows, cols = jnp.meshgrid(
      jnp.arange(IMAGE_SIZE, dtype=dtype) - centre,
      jnp.arange(IMAGE_SIZE, dtype=dtype) - centre, indexing='ij')
  cos, sin = jnp.cos(angle).astype(dtype), jnp.sin(angle).astype(dtype)
  # Each output pixel samples the input at the inversely rotated position.
  source_rows = (sin * cols + cos * rows + centre).reshape(-1)
  source_cols = (cos * cols - sin * rows + centre).reshape(-1)
  top, left = jnp.floor(source_rows), jnp.floor(source_cols)
  matrix = jnp.zeros((IMAGE_SIZE ** 2, IMAGE_SIZE ** 2), dtype)
  for row_offset in (0, 1):
    for col_offset in (0, 1):
      row, col = top + row_offset, left + col_offset
      weight = ((1 - jnp.abs(source_rows - row))
                * (1 - jnp.abs(source_cols - col)))
      inside = (row >= 0) & (row < IMAGE_SIZE) & (col >= 0) & (
          col < IMAGE_SIZE)
      index = (jnp.clip(row, 0, IMAGE_SIZE - 1) * IMAGE_SIZE
               + jnp.clip(col, 0, IMAGE_SIZE - 1)).astype(jnp.int32)
      matrix += jnp.where(inside, weight, 0)[:, None] * jax.nn.one_hot(
          index, IMAGE_SIZE ** 2, dtype=dtype)
  return matrix


def rotate_images(images: jax.Array, angle: jax.Array) -> jax.Array:
  """Rotates 8x8 images, ``(..., 64)`` or ``(..., 8, 8)``, counterclockwise
  by ``angle`` radians about their centre (bilinear, zero outside);
  ``angle = 0`` is exactly the identity and ``pi/2`` is ``np.rot90``."""
  flat = images.reshape(-1, IMAGE_SIZE ** 2)
  return (flat @ rotation_matrix(angle, flat.dtype).T).reshape(images.shape)


def make_stream(kind: str, seed: int, *, steps: int, batch: int, block: int,
                num_train: int):
  """Example indices (steps, batch), task ids (steps,), label permutations
  (tasks, classes) and rotation angles (steps,) for one seed."""
  rng = np.random.default_rng([seed, STREAMS.index(kind)])
  permutations = np.stack(
      [np.arange(NUM_CLASSES)]
      + [rng.permutation(NUM_CLASSES) for _ in range(NUM_TASKS - 1)])
  indices = rng.integers(0, num_train, (steps, batch))
  if kind == 'recurring':
    tasks = (np.arange(steps) // block) % 2
  elif kind == 'one_over_f':
    tasks = _one_over_f_tasks(rng, steps)
  else:
    tasks = np.zeros(steps, np.int64)
  if kind == 'rotation':
    angles = rotation_angles(rng, steps)
  else:
    angles = np.zeros(steps)
  return indices, tasks, permutations, angles.astype(np.float32)


def load_data(seed=0):
  digits = load_digits()
  images = (digits.data / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  held_out = order[:397]
  train = order[397:]
  return (images[train], labels[train]), (images[held_out], labels[held_out])
