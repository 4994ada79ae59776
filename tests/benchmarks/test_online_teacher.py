"""The pieces of ``benchmarks/online_teacher.py``: teacher, reference, loop.

The benchmark's claims rest on three things checked here: the full-covariance
EKF is the exact Kalman filter when the model is linear; the sampled teacher
is the stated generative model; and the predict-then-learn loop hands the
optimizer the gradient and Jacobian of the contract, so that the Bayesian
multiscale learner on one weight and one timescale reproduces the EKF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import multiscale_optax as mso
from benchmarks import _drifting_teacher as teacher
from benchmarks import _network_regression as regression
from benchmarks import harness
from benchmarks import online_teacher

# Float64 agreement of two algebraically identical filters: each step's
# rounding is O(n * eps) relative (a length-n dot product), and the filter is
# contractive, so errors do not grow along the run; for n <= 15, eps = 2.2e-16
# and targets of size O(10) this stays below 1e-12. 1e-10 leaves room for
# reassociation by XLA on other backends.
FLOAT64_TOLERANCE = 1e-10


def _linear(params, x):
  return x @ params


def _bayesian_on_linear(environment, sample, dim, **options):
  """The predictions of ``bayesian_multiscale`` under ``environment``'s
  prior on ``sample`` through the online loop (Jacobian passed)."""
  optimizer = mso.bayesian_multiscale(
      environment.decays, environment.process_variances,
      environment.noise_variance, **options)
  predictions, _ = teacher.run_online(
      _linear, jnp.zeros(dim, jnp.float64), optimizer, sample.inputs,
      sample.targets, noise_variance=environment.noise_variance,
      pass_jacobian=True)
  return predictions


@pytest.mark.parametrize('dim', [1, 3])
def test_joint_ekf_is_the_exact_kalman_filter_on_a_linear_model(dim):
  with jax.enable_x64(True):
    timescales = [1.0, 8.0, 64.0]
    environment = mso.OneOverFEnvironment.from_timescales(
        timescales, component_variance=0.7, noise_variance=0.3,
        input_dim=dim)
    sample = mso.sample_environment(
        environment, jax.random.key(dim), 400, dtype=jnp.float64)
    exact = mso.kalman_filter_predictions(
        environment, sample.inputs, sample.targets)
    ekf = teacher.joint_ekf_predictions(
        _linear, jnp.zeros(dim, jnp.float64), environment.decays,
        environment.process_variances, environment.initial_variances,
        environment.noise_variance, sample.inputs, sample.targets)
    np.testing.assert_allclose(
        ekf.predictions, exact.predictions, rtol=0, atol=FLOAT64_TOLERANCE)
    np.testing.assert_allclose(
        ekf.prediction_variances, exact.prediction_variances, rtol=0,
        atol=FLOAT64_TOLERANCE)


def test_teacher_outputs_are_the_mlp_at_the_drifting_weights():
  with jax.enable_x64(True):
    config = teacher.TeacherConfig(layer_sizes=(3, 4, 1),
                                   timescales=(1.0, 16.0))
    stream = teacher.sample_stream(
        config, jax.random.key(0), 50, keep_subweights=True)
    flat0, unravel = ravel_pytree(stream.initial_params)
    assert stream.subweights.shape == (50, 2, config.num_params)
    expected = jax.vmap(
        lambda x, components: teacher.mlp_apply(
            unravel(flat0 + components.sum(axis=0)), x))(
                stream.inputs, stream.subweights)
    # The same float64 computation in a different loop: rounding only.
    np.testing.assert_allclose(stream.outputs, expected, rtol=0,
                               atol=FLOAT64_TOLERANCE)
    residual = np.asarray(stream.targets - stream.outputs)
    assert residual.std() > 0


def test_teacher_subweights_are_ar1_with_the_stated_variances():
  with jax.enable_x64(True):
    config = teacher.TeacherConfig(layer_sizes=(4, 8, 1),
                                   timescales=(1.0, 4.0, 16.0),
                                   component_variance=0.5)
    seeds, steps, weights = 40, 60, config.num_params
    components = np.asarray(jax.vmap(lambda key: teacher.sample_stream(
        config, key, steps, keep_subweights=True).subweights)(
            jax.random.split(jax.random.key(1), seeds)))
    assert components.shape == (seeds, steps, 3, weights)
    decays = config.decays[:, None]
    innovations = components[:, 1:] - decays * components[:, :-1]
    # Each variance estimate averages N = 40 * 59 * 49 iid squares of
    # Gaussians: relative sd sqrt(2/N) = 5.4e-3; 5 sd is 2.7%.
    samples = seeds * (steps - 1) * weights
    np.testing.assert_allclose(
        np.mean(innovations**2, axis=(0, 1, 3)), config.process_variances,
        rtol=5 * np.sqrt(2.0 / samples))
    # Stationary from the start: at t = 0 every component has variance v.
    # 40 seeds x 49 weights = 1960 iid squares: relative sd sqrt(2/1960),
    # 5 sd = 16%.
    np.testing.assert_allclose(
        np.mean(components[:, 0] ** 2, axis=(0, 2)),
        config.stationary_variances, rtol=5 * np.sqrt(2.0 / (seeds * weights)))


def test_online_loop_passes_the_nll_gradient():
  # With SGD at rate r the step is w += (y - yhat) x: LMS, written out here.
  with jax.enable_x64(True):
    inputs = jax.random.normal(jax.random.key(2), (30, 3), jnp.float64)
    targets = jax.random.normal(jax.random.key(3), (30,), jnp.float64)
    rate, noise = 0.05, 0.5
    predictions, _ = teacher.run_online(
        _linear, jnp.zeros(3, jnp.float64), optax.sgd(rate * noise),
        inputs, targets, noise_variance=noise)
    weights = np.zeros(3)
    expected = []
    for x, y in zip(np.asarray(inputs), np.asarray(targets)):
      expected.append(x @ weights)
      weights = weights + rate * (y - x @ weights) * x
    np.testing.assert_allclose(predictions, expected, rtol=0,
                               atol=FLOAT64_TOLERANCE)


@pytest.mark.parametrize('learn_prior', [False, True])
def test_bayesian_multiscale_on_one_weight_is_the_joint_ekf(learn_prior):
  # One weight, one timescale: the diagonal filter is the scalar Kalman
  # filter, and so is the joint EKF; the loop must hand the optimizer the
  # contract's grads, jacobian and residual for the two to agree. With
  # learn_prior and a zero prior learning rate the residual path is used.
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment.from_timescales(
        [8.0], component_variance=0.7, noise_variance=0.3)
    sample = mso.sample_environment(
        environment, jax.random.key(4), 300, dtype=jnp.float64)
    ekf = teacher.joint_ekf_predictions(
        _linear, jnp.zeros(1, jnp.float64), environment.decays,
        environment.process_variances, environment.initial_variances,
        environment.noise_variance, sample.inputs, sample.targets)
    options = {'learn_prior': True, 'prior_learning_rate': 0.0} if (
        learn_prior) else {}
    predictions = _bayesian_on_linear(environment, sample, 1, **options)
    np.testing.assert_allclose(predictions, ekf.predictions, rtol=0,
                               atol=FLOAT64_TOLERANCE)


def test_blockwise_ekf_on_one_weight_is_the_joint_ekf():
  # One weight: its k x k block is the whole covariance.
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment.from_timescales(
        [1.0, 8.0, 64.0], component_variance=0.7, noise_variance=0.3)
    sample = mso.sample_environment(
        environment, jax.random.key(5), 300, dtype=jnp.float64)
    arguments = (
        _linear, jnp.zeros(1, jnp.float64), environment.decays,
        environment.process_variances, environment.initial_variances,
        environment.noise_variance, sample.inputs, sample.targets)
    joint = teacher.joint_ekf_predictions(*arguments)
    blockwise = teacher.blockwise_ekf_predictions(*arguments)
    np.testing.assert_allclose(blockwise.predictions, joint.predictions,
                               rtol=0, atol=FLOAT64_TOLERANCE)
    np.testing.assert_allclose(
        blockwise.prediction_variances, joint.prediction_variances, rtol=0,
        atol=FLOAT64_TOLERANCE)


def test_blockwise_ekf_with_one_timescale_is_bayesian_multiscale():
  # k = 1: the blocks are 1 x 1, the belief is diagonal over the weights,
  # and the blockwise EKF is the diagonal learner (S sums over the weights).
  with jax.enable_x64(True):
    environment = mso.OneOverFEnvironment.from_timescales(
        [16.0], component_variance=0.7, noise_variance=0.3, input_dim=4)
    sample = mso.sample_environment(
        environment, jax.random.key(6), 300, dtype=jnp.float64)
    blockwise = teacher.blockwise_ekf_predictions(
        _linear, jnp.zeros(4, jnp.float64), environment.decays,
        environment.process_variances, environment.initial_variances,
        environment.noise_variance, sample.inputs, sample.targets)
    predictions = _bayesian_on_linear(environment, sample, 4)
    np.testing.assert_allclose(predictions, blockwise.predictions, rtol=0,
                               atol=FLOAT64_TOLERANCE)


def test_bayesian_multiscale_at_full_rank_is_the_joint_ekf_on_an_mlp():
  # rank >= kP keeps the whole covariance: on the (nonlinear) teacher both
  # linearise at the same mean each step, so the predictions agree up to
  # rounding (measured 4e-16 here; FLOAT64_TOLERANCE as above).
  with jax.enable_x64(True):
    config = teacher.TeacherConfig(layer_sizes=(3, 2, 1),
                                   timescales=(1.0, 16.0))
    stream = teacher.sample_stream(config, jax.random.key(7), 200)
    size = len(config.timescales) * config.num_params
    ekf = teacher.joint_ekf_predictions(
        teacher.mlp_apply, stream.initial_params, config.decays,
        config.process_variances, config.stationary_variances,
        config.noise_variance, stream.inputs, stream.targets)
    optimizer = mso.bayesian_multiscale(
        config.decays, config.process_variances, config.noise_variance,
        rank=size)
    predictions, _ = teacher.run_online(
        teacher.mlp_apply, stream.initial_params, optimizer, stream.inputs,
        stream.targets, noise_variance=config.noise_variance,
        pass_jacobian=True)
    np.testing.assert_allclose(predictions, ekf.predictions, rtol=0,
                               atol=FLOAT64_TOLERANCE)


def test_the_registry_is_harness_learners_with_the_committed_row_ids():
  with jax.enable_x64(True):
    registry = online_teacher.learners(teacher.TeacherConfig())
  assert all(isinstance(learner, harness.Learner) for learner in registry)
  ids = [learner.id for learner in registry]
  committed = [row['id'] for row in harness.load_results(
      'online_teacher')['rows']]
  assert ids == committed
  assert ids[0] == online_teacher.EKF_ID
  by_id = {learner.id: learner for learner in registry}
  assert by_id[online_teacher.BAYES_ID].label == online_teacher.BAYES_NAME
  for learner in registry:
    belief = learner.meta.get('belief') or {}
    if 'moment matching' in learner.label:
      assert belief.get('variance_update') == 'moment_matching', learner.id


def test_the_true_prior_row_runs_moment_matching_on_the_teachers_prior():
  # The row its label calls "moment matching" predicts as the library's
  # learner given that rule explicitly, and differs from the default rule.
  config = teacher.TeacherConfig(layer_sizes=(3, 4, 1),
                                 timescales=(1.0, 16.0))
  with jax.enable_x64(True):
    streams = online_teacher.sample_batch(config, [0], 60)
    stream = jax.tree.map(lambda leaf: leaf[0], streams)
    by_id = {learner.id: learner
             for learner in online_teacher.learners(config)}
    row, _ = regression.predictions(by_id[online_teacher.BAYES_ID], {},
                                    streams)

    def direct(rule):
      return teacher.run_online(
          teacher.mlp_apply, stream.initial_params, mso.bayesian_multiscale(
              prior=config.prior, noise_variance=config.noise_variance,
              variance_update=rule), stream.inputs, stream.targets,
          noise_variance=config.noise_variance, pass_jacobian=True)[0]

    np.testing.assert_allclose(row[0], direct('moment_matching'), rtol=0,
                               atol=FLOAT64_TOLERANCE)
    assert np.max(np.abs(row[0] - direct('others_as_noise'))) > 1e-6


def test_the_score_runs_a_grid_vmapped_one_value_per_point_and_seed():
  config = teacher.TeacherConfig(layer_sizes=(3, 4, 1),
                                 timescales=(1.0, 16.0))
  with jax.enable_x64(True):
    streams = online_teacher.sample_batch(config, [0, 1], 40)
    sgd = next(learner for learner in online_teacher.learners(config)
               if learner.id == 'sgd')
    points = [{'learning_rate': 1e-3}, {'learning_rate': 1e-1}]
    scores = regression.make_score({(0, 1): streams})(sgd, points, [0, 1])
    alone = [regression.excess_errors(regression.predictions(
        sgd, point, streams)[0], streams) for point in points]
  assert scores.shape == (2, 2)
  np.testing.assert_allclose(scores, np.asarray(alone), rtol=1e-12)
