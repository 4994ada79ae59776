"""Tests of the loss-of-plasticity benchmark (``benchmarks/plasticity.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso
from benchmarks import plasticity

TINY = plasticity.Config(tasks=3, examples=8, batch=2, tuning_seeds=(100,),
                         test_seeds=(0,), bayesian_test_seeds=(0,))


def test_permutations_fixed_per_task_and_differ_between_tasks():
  permutations, indices = plasticity.make_stream(3, 20, 50, 1797)
  again, same_indices = plasticity.make_stream(3, 20, 50, 1797)
  np.testing.assert_array_equal(permutations, again)
  np.testing.assert_array_equal(indices, same_indices)
  assert permutations.shape == (20, 64) and indices.shape == (20, 50)
  for permutation in permutations:
    np.testing.assert_array_equal(np.sort(permutation), np.arange(64))
  assert len({tuple(p) for p in permutations}) == 20
  # A task's examples are distinct images.
  assert all(len(set(row)) == 50 for row in indices)
  other, _ = plasticity.make_stream(4, 20, 50, 1797)
  assert not np.array_equal(permutations, other)


def test_accuracy_is_online_predict_before_learn():
  # A learner that memorises the label it has just learned and predicts it:
  # predicted before learning, it is right only where a label repeats the
  # previous one; predicting after learning would be right every time.
  def init(params):
    del params
    return jnp.asarray(-1)

  def step(params, state, images, labels, key):
    del images, key
    logits = jax.nn.one_hot(jnp.full(labels.shape, state), 10)
    return logits, params, labels[-1]

  images = jnp.zeros((6, 64))
  labels = jnp.asarray([1, 1, 2, 2, 2, 3])
  indices = jnp.arange(6)[None]
  accuracy = plasticity.run_stream(
      (init, step), jax.random.key(0), images, labels, jnp.arange(64)[None],
      indices, 1)
  np.testing.assert_allclose(accuracy, [3 / 6])


@pytest.mark.parametrize('optimizer, point', [
    (optax.sgd(0.5), {}),
    (optax.adam(0.1), {'strength': 0.01}),
    (optax.sgd(0.5), {'shrink': 0.01}),
    (plasticity.bayesian_optimizer(),
     {'observation': 'categorical', 'fisher': 'exact'}),
])
def test_steps_return_the_logits_before_learning(optimizer, point):
  init, step = plasticity.training(optimizer, point)
  params = plasticity.mlp_init(jax.random.key(1))
  images, labels = plasticity.load_images()
  images, labels = jnp.asarray(images[:2]), jnp.asarray(labels[:2])
  logits, new_params, _ = step(
      params, init(params), images, labels, jax.random.key(2))
  np.testing.assert_allclose(logits, plasticity.mlp_apply(params, images),
                             rtol=1e-6)
  assert not all(
      np.allclose(new, old) for new, old in zip(
          jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True))


def test_ratio_metric_on_a_synthetic_curve():
  tasks = np.arange(30)
  accuracy = np.stack([0.9 - 0.01 * tasks, 0.5 + 0.0 * tasks])
  metrics = plasticity.plasticity_metrics(accuracy)
  # 10% of 30 tasks: the first and last 3.
  first = np.asarray([np.mean([0.9, 0.89, 0.88]), 0.5])
  last = np.asarray([np.mean([0.63, 0.62, 0.61]), 0.5])
  np.testing.assert_allclose(metrics['first10']['values'], first)
  np.testing.assert_allclose(metrics['last10']['values'], last)
  np.testing.assert_allclose(metrics['ratio']['values'], last / first)
  np.testing.assert_allclose(metrics['ratio']['mean'], np.mean(last / first))
  np.testing.assert_allclose(metrics['accuracy_per_task'],
                             accuracy.mean(axis=0))
  assert plasticity.edge_count(5) == 1 and plasticity.edge_count(200) == 20


def test_every_learner_runs_a_tiny_stream():
  for learner in plasticity.learners():
    points = learner.points()[:1]
    accuracy = plasticity.run_learner(learner, points, (0,), TINY)
    assert accuracy.shape == (1, 1, TINY.tasks), learner.id
    assert np.all(np.isfinite(accuracy)), learner.id
    assert np.all((accuracy >= 0) & (accuracy <= 1)), learner.id


def test_model_is_the_he_initialised_mlp():
  params = plasticity.mlp_init(jax.random.key(0))
  shapes = [(layer['weights'].shape, layer['bias'].shape) for layer in params]
  assert shapes == [((64, 100), (100,)), ((100, 100), (100,)),
                    ((100, 10), (10,))]
  assert sum(leaf.size for leaf in jax.tree.leaves(params)) == (
      plasticity.NUM_PARAMS)
  for layer, variances in zip(params, plasticity.init_variances(),
                              strict=True):
    fan_in = layer['weights'].shape[0]
    np.testing.assert_allclose(variances['weights'], 2.0 / fan_in)
    np.testing.assert_array_equal(variances['bias'], 0.0)
    np.testing.assert_array_equal(layer['bias'], 0.0)
    # He initialisation: the weights' sample variance is 2 / fan-in to
    # within 5 standard errors (sd of a sample variance: v sqrt(2 / n)).
    count = layer['weights'].size
    assert abs(np.var(layer['weights']) - 2.0 / fan_in) < (
        5 * (2.0 / fan_in) * np.sqrt(2.0 / count))


def test_shrink_and_perturb_keeps_the_initial_distribution():
  # Without gradients (lr 0) the weights are AR(1) with stationary
  # variance sigma^2 / (1 - (1 - shrink)^2) = the He variance.
  init, step = plasticity.gradient_training(optax.sgd(0.0), shrink=0.5)
  params = plasticity.mlp_init(jax.random.key(1))
  state = init(params)
  images, labels = plasticity.load_images()
  images, labels = jnp.asarray(images[:1]), jnp.asarray(labels[:1])
  for step_key in jax.random.split(jax.random.key(2), 20):
    _, params, state = step(params, state, images, labels, step_key)
  for layer in params:
    fan_in = layer['weights'].shape[0]
    count = layer['weights'].size
    assert abs(np.var(layer['weights']) - 2.0 / fan_in) < (
        5 * (2.0 / fan_in) * np.sqrt(2.0 / count))
    np.testing.assert_array_equal(layer['bias'], 0.0)


def test_bayesian_prior_sums_to_the_he_variance():
  prior = plasticity.bayesian_prior()
  decays, process, initial = (np.asarray(prior.decays),
                              np.asarray(prior.process_variances),
                              np.asarray(prior.initial_variances))
  assert decays[0] == 1.0 and process[0] > 0  # a random-walk permanent part
  np.testing.assert_allclose(initial.sum(), 2 / 64)
  np.testing.assert_allclose(initial[1:], process[1:] / (1 - decays[1:] ** 2))


@pytest.mark.parametrize('adam', [False, True])
def test_anchored_multiscale_keeps_the_initial_params_as_permanent_part(adam):
  decays, rates = plasticity.anchored_multiscale_shape()
  plain_decays, _ = plasticity.multiscale_shape()
  np.testing.assert_array_equal(decays, plain_decays)
  assert decays[0] == 1.0 and rates[0] == 0.0
  np.testing.assert_allclose(rates[1:], 1.0 / (len(rates) - 1))
  init, step = plasticity.gradient_training(
      plasticity.multiscale_method(1e-3 if adam else 0.05, adam,
                                   anchored=True))
  initial = plasticity.mlp_init(jax.random.key(1))
  params, state = initial, init(initial)
  images, labels = plasticity.load_images()
  for start in range(0, 20, 2):
    _, params, state = step(
        params, state, jnp.asarray(images[start:start + 2]),
        jnp.asarray(labels[start:start + 2]), jax.random.key(start))
  permanent = mso.get_subweights(params, state['opt']).values[0]
  # The permanent part (rate 0) is theta_0, to float32 rounding of
  # params - sum(stored subweights); the params themselves have moved.
  for kept, start_value in zip(jax.tree.leaves(permanent),
                               jax.tree.leaves(initial), strict=True):
    np.testing.assert_allclose(kept, start_value, atol=1e-5)
  assert max(float(jnp.max(jnp.abs(new - old))) for new, old in zip(
      jax.tree.leaves(params), jax.tree.leaves(initial), strict=True)) > 1e-3
