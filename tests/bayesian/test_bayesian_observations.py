"""Tests of the observation models in ``bayesian_observations``.

Equivalences run in float64; Monte-Carlo checks compare a mean over many
keys with the exact expectation, within six standard errors computed
exactly (the sampled label takes only C values, so its moments are sums).
"""

from __future__ import annotations

import textwrap

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multiscale_optax as mso
from multiscale_optax._src.gaussian_belief import PseudoResidual

FISHERS = ('exact', 'sampled', 'empirical')


def apply_mlp(params, inputs):
  return jnp.tanh(inputs @ params['w1']) @ params['w2'] + params['b']


def small_params(dtype=None):
  return {'w1': jnp.asarray([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.7]], dtype),
          'w2': jnp.asarray([[1.0, -0.5, 0.2], [0.3, 0.8, -1.1]], dtype),
          'b': jnp.asarray([0.1, -0.2, 0.05], dtype)}


def small_inputs(dtype=None):
  return jnp.asarray([[1.0, -2.0, 0.5], [0.2, 0.4, -1.0]], dtype)


def flat(tree, leading=0):
  leaves = jax.tree.leaves(tree)
  return jnp.concatenate(
      [leaf.reshape((*leaf.shape[:leading], -1)) for leaf in leaves], -1)


def observe(fisher='exact', key=None, labels=(2, 0), **kwargs):
  return mso.categorical_observation(
      apply_mlp, small_params(), small_inputs(), jnp.asarray(labels),
      fisher=fisher, key=key, **kwargs)


# Values of the implementation before `fisher` existed (commit 82a54b8),
# printed to 17 digits. The same float64 operations run now; 1e-13 allows
# a reassociation of the sums of at most 6 terms of size ~1.
def test_exact_mode_reproduces_the_previous_values():
  with jax.enable_x64(True):
    info, grads, extra = observe(epsilon=1e-3)
    np.testing.assert_allclose(info.loss, 1.9667519299062008, atol=1e-13)
    np.testing.assert_allclose(extra['residual'], [
        -0.20303555944969212, -0.42959751177656075, 0.6326330712262529,
        0.6191530937330082, -0.08759014270640406, -0.5315629510266041],
                               atol=1e-13)
    np.testing.assert_allclose(extra['jacobian']['w1'][:, 1, 0], [
        -0.18552154909889945, 0.23499537483151156, -0.04947382573261214,
        0.05643216039385133, -0.021995812775453837, -0.03443634761839748],
                               atol=1e-13)
    np.testing.assert_allclose(
        extra['observation_covariance'][[0, 1, 3, 4], [0, 2, 3, 5]],
        [0.16281212104864265, -0.15781991851019878, 0.23680254025385297,
         -0.04655967473785753], atol=1e-13)
    np.testing.assert_allclose(grads['w2'][1], [
        0.36405285234586227, -0.07439865341915025, -0.289654198926712],
                               atol=1e-13)
    assert extra['residual'].shape == (6,)
    assert extra['observation_covariance'].shape == (6, 6)


def test_gaussian_exact_mode_reproduces_the_previous_values():
  with jax.enable_x64(True):
    targets = jnp.asarray([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    info, grads, extra = mso.gaussian_observation(
        apply_mlp, small_params(), small_inputs(), targets, 0.5)
    expected_jacobian = jax.jacrev(
        lambda p: apply_mlp(p, small_inputs()).reshape(-1))(small_params())
    for name, rows in extra['jacobian'].items():
      np.testing.assert_allclose(rows, expected_jacobian[name], atol=1e-13)
    residual = (targets - apply_mlp(small_params(), small_inputs()))
    np.testing.assert_allclose(extra['residual'], residual.reshape(-1),
                               atol=1e-13)
    np.testing.assert_allclose(extra['observation_covariance'],
                               0.5 * np.eye(6), atol=0)
    np.testing.assert_allclose(
        info.loss, np.sum(np.square(residual)) / 1.0, atol=1e-13)
    assert set(grads) == set(small_params())


@pytest.mark.parametrize('fisher', FISHERS)
@pytest.mark.parametrize('bad', [3, -1, 7])
def test_concrete_out_of_range_labels_are_refused(fisher, bad):
  with pytest.raises(ValueError, match=r'`labels` must lie in \[0, 3\)'):
    observe(fisher, jax.random.key(0), labels=(0, bad))


@pytest.mark.parametrize('fisher', FISHERS)
def test_traced_out_of_range_label_gives_a_nan_residual_and_no_gradient(
    fisher):
  with jax.enable_x64(True):
    labels = jnp.asarray([2, 7])
    info, grads, extra = jax.jit(
        lambda labels, key: mso.categorical_observation(
            apply_mlp, small_params(), small_inputs(), labels,
            fisher=fisher, key=key))(labels, jax.random.key(1))
    classes = 3
    residual = np.asarray(extra['residual'])
    rows = flat(extra['jacobian'], leading=1)
    if fisher == 'sampled':
      # One observed row serves the batch: its residual is NaN, so the
      # filter skips the whole observation; the drawn rows are 0 and the
      # invalid example's drawn row is zero.
      assert np.isnan(residual[0])
      np.testing.assert_array_equal(residual[1:], 0.0)
      np.testing.assert_array_equal(rows[2], 0.0)
    else:
      per_example = classes if fisher == 'exact' else 1
      residual = residual.reshape(2, per_example)
      assert np.all(np.isfinite(residual[0]))
      assert np.all(np.isnan(residual[1]))
    assert np.isnan(info.loss)
    # grads is the cross-entropy gradient of the valid example alone.
    expected = jax.grad(lambda p: -jax.nn.log_softmax(
        apply_mlp(p, small_inputs()[:1]))[0, 2])(small_params())
    for name in expected:
      np.testing.assert_allclose(grads[name], expected[name], atol=1e-13)
    if fisher == 'empirical':
      np.testing.assert_array_equal(rows[1], 0.0)
    assert np.all(np.isfinite(rows))
    assert np.all(np.isfinite(extra['observation_covariance']))


def test_epsilon_below_the_dtype_floor_is_refused():
  with pytest.raises(ValueError, match=r'`epsilon` must lie in \[1\.53e-05'):
    mso.categorical_observation(
        apply_mlp, small_params(jnp.float32), small_inputs(jnp.float32),
        jnp.asarray([0, 1]), epsilon=1e-7)
  with jax.enable_x64(True):
    # float64's floor is 128 * 2.2e-16: 1e-9 is allowed there.
    mso.categorical_observation(
        apply_mlp, small_params(), small_inputs(), jnp.asarray([0, 1]),
        epsilon=1e-9)
    with pytest.raises(ValueError, match='`epsilon`'):
      mso.categorical_observation(
          apply_mlp, small_params(), small_inputs(), jnp.asarray([0, 1]),
          epsilon=1e-15)


def _innovation_is_positive_definite(extra, variance):
  rows = flat(extra['jacobian'], leading=1)
  innovation = extra['observation_covariance'] + variance * rows @ rows.T
  return bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(
      0.5 * (innovation + innovation.T)))))


@pytest.mark.parametrize('epsilon', [1.53e-5, 1e-4, 1e-3, 1e-1])
def test_every_allowed_epsilon_is_finite_on_saturated_float32_logits(
    epsilon):
  # Logits ~ +-50: before the floor, epsilon = 1e-7 gave NaN updates in 1
  # draw of these 20 and 1e-9 in 17. The prior variance is 0.01 / (1 -
  # 0.99^2) ~ 0.5, so lambda_max(H V H^T) ~ 2 here, far below the
  # epsilon / (4u) ~ 64 the floor allows.
  opt = mso.bayesian_multiscale([0.99], [0.01], 1.0)
  observe_fn = jax.jit(mso.categorical_observation, static_argnums=0)
  update = jax.jit(opt.update)
  for seed in range(20):
    key_w, key_x, key_y = jax.random.split(jax.random.key(seed), 3)
    params = {'w': jax.random.normal(key_w, (16, 10)) * 50 / 4}
    inputs = jax.random.normal(key_x, (4, 16))
    labels = jax.random.randint(key_y, (4,), 0, 10)
    _, grads, extra = observe_fn(
        lambda p, x: x @ p['w'], params, inputs, labels, epsilon=epsilon)
    state = opt.init(params)
    updates, new_state = update(grads, state, params, **extra)
    assert np.all(np.isfinite(updates['w'])), seed
    assert _innovation_is_positive_definite(extra, 0.01 / (1 - 0.99**2))
    # Once the filter skips non-finite observations, a skip must not hide
    # a failed factorisation.
    assert int(getattr(new_state, 'skipped_observations', 0)) == 0


def apply_binary(params, inputs):
  """A two-class model: logits (..., 2)."""
  return jnp.tanh(inputs @ params['w1']) @ params['w2'][:, :2] + (
      params['b'][:2])


def _information(extra):
  rows = flat(extra['jacobian'], 1)
  return rows.T @ jnp.linalg.solve(extra['observation_covariance'], rows)


def _binary_moments(weight):
  """E and per-entry variance of the sampled information, labels y ~ p.

  Two examples of two classes: the observed labels and the drawn labels
  take 4 values each, so the moments are exact sums over 16 outcomes.
  """
  params, inputs = small_params(), small_inputs()
  probabilities = jax.nn.softmax(apply_binary(params, inputs), axis=-1)
  jacobian = flat(jax.jacrev(lambda p: apply_binary(p, inputs))(params), 2)
  scores = [[jacobian[n].T @ (jnp.eye(2)[c] - probabilities[n])
             for c in range(2)] for n in range(2)]
  mean = jnp.zeros((jacobian.shape[-1],) * 2)
  square = jnp.zeros_like(mean)
  for y0, y1, d0, d1 in np.ndindex(2, 2, 2, 2):
    chance = (probabilities[0, y0] * probabilities[1, y1]
              * probabilities[0, d0] * probabilities[1, d1])
    observed = scores[0][y0] + scores[1][y1]
    value = weight * jnp.outer(observed, observed) + (1 - weight) * (
        jnp.outer(scores[0][d0], scores[0][d0])
        + jnp.outer(scores[1][d1], scores[1][d1]))
    mean += chance * value
    square += chance * value**2
  fisher = sum(
      jacobian[n].T @ (jnp.diag(probabilities[n]) - jnp.outer(
          probabilities[n], probabilities[n])) @ jacobian[n]
      for n in range(2))
  return fisher, mean, square - mean**2


@pytest.mark.parametrize('weight', [1e-3, 0.5])
def test_sampled_information_averages_to_the_exact_fisher(weight):
  count = 4000
  with jax.enable_x64(True):
    params, inputs = small_params(), small_inputs()
    fisher, mean, variance = _binary_moments(weight)
    # Exactly (a sum over the 16 outcomes) when the labels follow the
    # model: the observed row's delta g g^T averages to delta F because
    # the two examples' scores have mean zero and are independent.
    np.testing.assert_allclose(mean, fisher, atol=1e-13)
    # The exact mode's H^T R^-1 H is F up to epsilon |J|^2.
    _, _, exact = mso.categorical_observation(
        apply_binary, params, inputs, jnp.asarray([1, 0]), epsilon=1e-10)
    np.testing.assert_allclose(_information(exact), fisher, atol=1e-8)

    def information(key):
      key_y, key_draw = jax.random.split(key)
      logits = apply_binary(params, inputs)
      labels = jax.random.categorical(key_y, logits, axis=-1)
      _, _, extra = mso.categorical_observation(
          apply_binary, params, inputs, labels, fisher='sampled',
          key=key_draw, empirical_weight=weight)
      return _information(extra)

    draws = jax.jit(jax.vmap(information))(
        jax.random.split(jax.random.key(3), count))
    # The mean of `count` draws has standard error sqrt(variance / count)
    # per entry; 6 of them are exceeded with probability ~2e-9 per entry.
    standard_error = jnp.sqrt(variance / count)
    assert np.all(np.abs(draws.mean(0) - fisher)
                  <= 6 * standard_error + 1e-12)
    # The bound is not vacuous: one draw is far off.
    assert np.max(np.abs(draws[0] - fisher)) > 20 * np.max(standard_error)


def test_several_samples_average_to_the_fisher_with_less_spread():
  count = 2000
  with jax.enable_x64(True):
    params, inputs = small_params(), small_inputs()
    fisher, _, variance = _binary_moments(1e-3)
    labels = jnp.asarray([1, 0])

    def information(key, samples):
      _, _, extra = mso.categorical_observation(
          apply_binary, params, inputs, labels, fisher='sampled', key=key,
          samples=samples)
      return _information(extra)

    keys = jax.random.split(jax.random.key(5), count)
    one, four = (jax.jit(jax.vmap(lambda key, m=m: information(key, m)))(keys)
                 for m in (1, 4))
    # With the observed labels fixed, the drawn part (weight 1 - delta) is
    # what varies; its mean is (1 - delta) F plus delta g g^T, and M = 4
    # draws quarter its variance.
    _, grads, _ = mso.categorical_observation(
        apply_binary, params, inputs, labels)
    observed = flat(grads)
    expected = 0.999 * fisher + 1e-3 * jnp.outer(observed, observed)
    standard_error = jnp.sqrt(variance / count)
    for draws in (one, four):
      assert np.all(np.abs(draws.mean(0) - expected)
                    <= 6 * standard_error + 1e-12)
    spread_one = float(jnp.mean(jnp.var(one, axis=0)))
    spread_four = float(jnp.mean(jnp.var(four, axis=0)))
    assert 0.15 < spread_four / spread_one < 0.4


@pytest.mark.parametrize('fisher', FISHERS)
@pytest.mark.parametrize('shape', [(4,), (2, 3)])
def test_rows_through_each_example_equal_rows_through_the_batch(
    fisher, shape):
  # Inputs that lead with the batch shape are pulled back one example at a
  # time; an input leaf without it (here an unused one) makes every row a
  # pullback of the whole batch. The rows agree: in float64 the two
  # differ by the rounding of sums of a few terms of size ~1 (the zero
  # cotangents of the other examples add exact zeros), so 1e-13.
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64),
                          small_params())
    inputs = jnp.asarray(rng.normal(size=(*shape, 3)))
    labels = jnp.asarray(rng.integers(0, 3, size=shape))

    def observe_with(batched_inputs):
      return mso.categorical_observation(
          lambda p, x: apply_mlp(p, x['x']), params, batched_inputs, labels,
          fisher=fisher, key=jax.random.key(1), samples=2)

    _, grads, by_example = observe_with({'x': inputs})
    _, same_grads, by_batch = observe_with(
        {'x': inputs, 'unused': jnp.zeros(7)})
    assert by_example['jacobian']['w1'].shape == by_batch['jacobian'][
        'w1'].shape
    for name in ('jacobian', 'residual', 'observation_covariance'):
      np.testing.assert_allclose(
          flat(by_example[name], 1) if name == 'jacobian'
          else by_example[name],
          flat(by_batch[name], 1) if name == 'jacobian' else by_batch[name],
          rtol=0, atol=1e-13)
    np.testing.assert_array_equal(flat(grads), flat(same_grads))


@pytest.mark.parametrize('shape', [(), (5,), (2, 3)])
@pytest.mark.parametrize('samples', [1, 3])
def test_sampled_has_one_observed_row_and_m_rows_per_example(shape, samples):
  examples = int(np.prod(shape))
  params = {'w': jnp.ones((4, 3)) * 0.1}
  inputs = jnp.ones((*shape, 4))
  labels = jnp.zeros(shape, jnp.int32)
  _, _, extra = jax.jit(
      lambda key: mso.categorical_observation(
          lambda p, x: x @ p['w'], params, inputs, labels, fisher='sampled',
          key=key, samples=samples))(jax.random.key(0))
  count = 1 + examples * samples
  assert extra['jacobian']['w'].shape == (count, 4, 3)
  assert extra['residual'].shape == (count,)
  np.testing.assert_array_equal(extra['observation_covariance'],
                                np.eye(count))


@pytest.mark.parametrize('shape', [(), (5,), (2, 3)])
def test_empirical_has_one_row_per_example(shape):
  examples = int(np.prod(shape))
  params = {'w': jnp.ones((4, 3)) * 0.1}
  inputs = jnp.ones((*shape, 4))
  labels = jnp.zeros(shape, jnp.int32)
  _, _, extra = jax.jit(
      lambda: mso.categorical_observation(
          lambda p, x: x @ p['w'], params, inputs, labels,
          fisher='empirical'))()
  assert extra['jacobian']['w'].shape == (examples, 4, 3)
  assert extra['residual'].shape == (examples,)
  assert extra['observation_covariance'].shape == (examples, examples)


def test_sampled_rows_are_the_observed_gradient_and_drawn_gradients():
  with jax.enable_x64(True):
    weight, samples = 0.01, 2
    _, grads, extra = observe('sampled', jax.random.key(4), samples=samples,
                              empirical_weight=weight)
    rows = flat(extra['jacobian'], 1)
    residual = extra['residual']
    # Row 0: sqrt(delta) grad log p(y), residual 1/sqrt(delta): H^T e is
    # the observed labels' log-likelihood gradient, for every draw.
    np.testing.assert_allclose(rows[0], -np.sqrt(weight) * flat(grads),
                               atol=1e-13)
    np.testing.assert_allclose(residual, [1 / np.sqrt(weight), 0, 0, 0, 0],
                               atol=1e-13)
    np.testing.assert_allclose(rows.T @ residual, -flat(grads), atol=1e-12)
    candidates = [
        flat(jax.grad(lambda p, n=n, c=c: jax.nn.log_softmax(
            apply_mlp(p, small_inputs()))[n, c])(small_params()))
        for n in range(2) for c in range(3)]
    scale = np.sqrt((1 - weight) / samples)
    for n in range(2):
      for m in range(samples):
        row = rows[1 + n * samples + m] / scale
        distances = [float(jnp.max(jnp.abs(row - candidates[3 * n + c])))
                     for c in range(3)]
        assert min(distances) < 1e-13


@pytest.mark.parametrize('rank', [0, 2])
@pytest.mark.parametrize('fisher', ['sampled', 'empirical'])
def test_the_mean_moves_by_the_posterior_covariance_times_the_gradient(
    rank, fisher):
  # One subweight of decay 1 with no process noise: the update is the
  # Kalman step itself, Sigma' H^T R^-1 e with Sigma'^-1 = Sigma^-1 + H^T
  # R^-1 H (Sigma = v I; at init the low-rank factors are zero), and
  # H^T R^-1 e is the observed labels' gradient, -grads.
  with jax.enable_x64(True):
    variance = 0.3
    opt = mso.bayesian_multiscale([1.0], [0.0], 1.0,
                                  initial_variances=[variance], rank=rank)
    params = small_params()
    _, grads, extra = observe(fisher, jax.random.key(6), samples=2)
    updates, _ = opt.update(grads, opt.init(params), params, **extra)
    information = _information(extra)
    posterior = jnp.linalg.inv(
        jnp.eye(information.shape[0]) / variance + information)
    np.testing.assert_allclose(flat(updates), posterior @ -flat(grads),
                               rtol=1e-9, atol=1e-13)
    # Not the prior's step: the information shrinks it.
    assert float(jnp.max(jnp.abs(
        flat(updates) + variance * flat(grads)))) > 1e-3


@pytest.mark.parametrize('rank', [0, 2])
@pytest.mark.parametrize('fisher', ['sampled', 'empirical'])
def test_sampled_and_empirical_steps_agree_under_jit_and_vmap(rank, fisher):
  opt = mso.bayesian_multiscale([0.9, 0.999], [0.01, 0.001], 1.0, rank=rank)
  params = small_params(jnp.float32)
  inputs = small_inputs(jnp.float32)

  def step(key, labels):
    state = opt.init(params)
    for key_step in jax.random.split(key, 3):
      _, grads, extra = mso.categorical_observation(
          apply_mlp, params, inputs, labels, fisher=fisher, key=key_step,
          samples=2)
      updates, state = opt.update(grads, state, params, **extra)
    return flat(updates), state.skipped_observations

  keys = jax.random.split(jax.random.key(7), 3)
  labels = jnp.asarray([[2, 0], [1, 1], [0, 2]])
  batched, skipped = jax.jit(jax.vmap(step))(keys, labels)
  for index in range(3):
    alone, _ = step(keys[index], labels[index])
    np.testing.assert_allclose(batched[index], alone, rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(skipped, 0)
  assert np.all(np.isfinite(batched))
  # The draws differ between keys, and so do the steps.
  assert float(jnp.max(jnp.abs(batched[0] - batched[1]))) > 1e-4


_SHARDED_OBSERVATIONS_SCRIPT = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import multiscale_optax as mso

    # A fresh process: float64 here leaks into no other test.
    jax.config.update('jax_enable_x64', True)
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('data', 'model'))
    shardings = {'kernel': NamedSharding(mesh, P('data', 'model')),
                 'bias': NamedSharding(mesh, P('model'))}
    key = jax.random.key(0)
    # NumPy, so that placing it makes new (donatable) arrays each time.
    start = {'kernel': np.asarray(0.1 * jax.random.normal(key, (16, 8))),
             'bias': np.zeros(8)}
    inputs = jax.random.normal(jax.random.key(1), (4, 16))
    labels = jnp.asarray([0, 3, 7, 5])

    def apply_fn(params, inputs):
      return inputs @ params['kernel'] + params['bias']

    for fisher in ('exact', 'sampled', 'empirical'):
      for rank in (None, 2):
        opt = mso.bayesian_multiscale([0.9, 0.999], [0.01, 0.001], 1.0,
                                      rank=rank)

        def step(params, state, step_key, fisher=fisher, opt=opt):
          _, grads, extra = mso.categorical_observation(
              apply_fn, params, inputs, labels, fisher=fisher,
              key=step_key if fisher == 'sampled' else None)
          updates, state = opt.update(grads, state, params, **extra)
          return optax.apply_updates(params, updates), state

        results = []
        for placed in (jax.device_put(start, shardings),
                       jax.device_put(start, jax.devices()[0])):
          params = placed
          state = opt.init(params)
          jitted = jax.jit(step, donate_argnums=(0, 1))
          for step_key in jax.random.split(jax.random.key(2), 3):
            params, state = jitted(params, state, step_key)
          results.append((params, state))
        (sharded, sharded_state), (single, _) = results
        for name, leaf in sharded.items():
          assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
              fisher, rank, name, leaf.sharding)
        for tree in (*sharded_state.means, *sharded_state.variances):
          for name, leaf in tree.items():
            assert leaf.sharding.is_equivalent_to(
                shardings[name], leaf.ndim), (fisher, rank, name)
        # Float64 sums over 136 params in another order: each differs by a
        # few ulps of the largest term, far below 1e-10.
        error = max(float(np.max(np.abs(
            np.asarray(sharded[name]) - np.asarray(single[name]))))
                    for name in single)
        moved = float(np.max(np.abs(
            np.asarray(single['kernel']) - start['kernel'])))
        assert error < 1e-10 and moved > 1e-4, (fisher, rank, error, moved)
    print('SHARDING-OK')
''')


def test_every_fisher_mode_keeps_the_params_sharding():
  # The three observations, diagonal and low-rank beliefs, on an 8-device
  # mesh: the state stays sharded like the params, and the steps equal the
  # single-device ones.
  helpers.run_on_eight_cpu_devices(_SHARDED_OBSERVATIONS_SCRIPT)


def test_empirical_rows_give_the_observed_gradient_exactly():
  with jax.enable_x64(True):
    _, grads, extra = observe('empirical')
    rows = flat(extra['jacobian'], 1)
    np.testing.assert_array_equal(extra['residual'], [1.0, 1.0])
    np.testing.assert_array_equal(extra['observation_covariance'], np.eye(2))
    np.testing.assert_allclose(rows.T @ extra['residual'], -flat(grads),
                               atol=1e-13)


def test_sampled_needs_a_key_and_fisher_is_checked():
  with pytest.raises(ValueError, match='`key`'):
    observe('sampled')
  with pytest.raises(ValueError, match='`fisher` must be one of'):
    observe('monte-carlo')
  with pytest.raises(TypeError, match='`fisher`'):
    observe(None)
  with pytest.raises(ValueError, match='`samples`'):
    observe('sampled', jax.random.key(0), samples=0)
  with pytest.raises(TypeError, match='`samples`'):
    observe('sampled', jax.random.key(0), samples=1.5)
  for weight in (0.0, 1.0, -0.1):
    with pytest.raises(ValueError, match='`empirical_weight`'):
      observe('sampled', jax.random.key(0), empirical_weight=weight)
  with pytest.raises(ValueError, match='`fisher` must be one of'):
    mso.gaussian_observation(
        apply_mlp, small_params(), small_inputs(), jnp.zeros((2, 3)), 1.0,
        fisher='empirical')
  with pytest.raises(ValueError, match='`key`'):
    mso.gaussian_observation(
        apply_mlp, small_params(), small_inputs(), jnp.zeros((2, 3)), 1.0,
        fisher='sampled')
  with pytest.raises(ValueError, match='`projections`'):
    mso.gaussian_observation(
        apply_mlp, small_params(), small_inputs(), jnp.zeros((2, 3)), 1.0,
        fisher='sampled', key=jax.random.key(0), projections=0)


@pytest.mark.parametrize('fisher', FISHERS)
def test_sampled_stream_learns_a_linear_rule(fisher):
  # Softmax regression on a fixed linear rule, one example per step: the
  # online accuracy over the second half must beat chance (1/3) by far
  # (0.91-0.95 measured for three key seeds; the binomial standard error
  # over 150 examples is 0.02).
  key_x, key_w = jax.random.split(jax.random.key(20))
  inputs = jax.random.normal(key_x, (300, 4))
  labels = jnp.argmax(inputs @ (jax.random.normal(key_w, (4, 3)) * 3.0), -1)
  opt = mso.bayesian_multiscale(
      [0.99, 0.999], [0.01 * (1 - 0.99**2), 0.1 * (1 - 0.999**2)], 1.0)

  def step(carry, observation):
    params, state = carry
    x, label, key = observation
    info, grads, extra = mso.categorical_observation(
        lambda p, x: x @ p['w'], params, x, label, fisher=fisher, key=key)
    updates, state = opt.update(grads, state, params, **extra)
    correct = jnp.argmax(info.predictions) == label
    return (optax.apply_updates(params, updates), state), correct

  params = {'w': jnp.zeros((4, 3))}
  keys = jax.random.split(jax.random.key(0), 300)
  (params, _), correct = jax.jit(
      lambda carry, data: jax.lax.scan(step, carry, data))(
          (params, opt.init(params)), (inputs, labels, keys))
  assert np.all(np.isfinite(params['w']))
  assert float(jnp.mean(correct[150:])) > 0.8


def test_gaussian_projections_average_to_the_exact_fisher():
  count = 4000
  with jax.enable_x64(True):
    targets = jnp.asarray([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    noise = 0.5
    _, _, exact = mso.gaussian_observation(
        apply_mlp, small_params(), small_inputs(), targets, noise)
    jacobian = flat(exact['jacobian'], 1)
    fisher = jacobian.T @ jacobian / noise
    gradient = jacobian.T @ exact['residual'] / noise

    def estimates(key):
      _, _, extra = mso.gaussian_observation(
          apply_mlp, small_params(), small_inputs(), targets, noise,
          fisher='sampled', key=key, projections=2)
      rows = flat(extra['jacobian'], 1)
      precision = jnp.linalg.inv(extra['observation_covariance'])
      return (rows.T @ precision @ rows,
              rows.T @ precision @ extra['residual'])

    sampled_fisher, sampled_gradient = jax.jit(jax.vmap(estimates))(
        jax.random.split(jax.random.key(5), count))
    assert sampled_fisher.shape[1:] == fisher.shape
    # One projection estimates (J^T J)_ij by (w.a)(w.b), a = J[:, i],
    # b = J[:, j], w Rademacher: its variance is the sum over pairs m < n
    # of (a_m b_n + a_n b_m)^2 = |a|^2 |b|^2 + (a.b)^2 - 2 sum a_m^2 b_m^2;
    # the K = 2 projections and the draws average it.
    def standard_error(left, right):
      variance = (jnp.sum(left**2, 0)[:, None] * jnp.sum(right**2, 0)[None]
                  + (left.T @ right)**2 - 2 * (left.T**2) @ (right**2))
      return jnp.sqrt(jnp.maximum(variance, 0.0) / (2 * count)) / noise

    fisher_se = standard_error(jacobian, jacobian)
    gradient_se = standard_error(jacobian, exact['residual'][:, None])[:, 0]
    assert np.all(np.abs(sampled_fisher.mean(0) - fisher)
                  <= 6 * fisher_se + 1e-12)
    assert np.all(np.abs(sampled_gradient.mean(0) - gradient)
                  <= 6 * gradient_se + 1e-12)
    # The bound is not vacuous: one draw is far off.
    assert np.max(np.abs(sampled_fisher[0] - fisher)) > 20 * np.max(
        fisher_se)


def test_gaussian_projections_shrink_the_solve_and_run_under_jit():
  params = {'w': jnp.ones(3) * 0.1}
  inputs = jnp.ones((50, 3))
  _, grads, extra = jax.jit(
      lambda key: mso.gaussian_observation(
          lambda p, x: x @ p['w'], params, inputs, jnp.ones(50), 1.0,
          fisher='sampled', key=key, projections=4))(jax.random.key(0))
  assert extra['jacobian']['w'].shape == (4, 3)
  assert extra['observation_covariance'].shape == (4, 4)
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params, **extra)
  assert np.all(np.isfinite(updates['w']))


@pytest.mark.parametrize('fisher', ['sampled', 'empirical'])
@pytest.mark.parametrize('option', [
    {'learn_prior': True},
    {'learn_prior': True, 'learn_noise_variance': True},
    {'outlier_threshold': 5.0}])
def test_pseudo_residuals_refuse_options_that_read_the_residual(
    option, fisher):
  # The sampled and empirical observations' residuals are devices (the
  # sampled one's first entry is 1/sqrt(delta), the empirical one's are 1,
  # whatever the data): a scale or outlier bound learned from them would be
  # silently wrong, so the learner refuses it by name.
  params = {'w': jnp.zeros((3, 2))}

  def apply(p, x):
    return x @ p['w']

  opt = mso.bayesian_multiscale([1.0, 0.9], [0.0, 0.19], 1.0,
                                initial_variances=[1.0, 1.0], **option)
  state = opt.init(params)
  _, grads, extra = mso.categorical_observation(
      apply, params, jnp.ones(3), jnp.asarray(1), fisher=fisher,
      key=jax.random.key(0) if fisher == 'sampled' else None)
  assert isinstance(extra['pseudo_residual'], PseudoResidual)
  with pytest.raises(ValueError, match='pseudo-residual'):
    opt.update(grads, state, params, **extra)
  # Through jax.jit too: the marker has no leaves, so it stays a marker.
  with pytest.raises(ValueError, match='pseudo-residual'):
    jax.jit(opt.update)(grads, state, params, **extra)
  # The same options with the exact observation run.
  _, grads, extra = mso.categorical_observation(
      apply, params, jnp.ones(3), jnp.asarray(1))
  assert 'pseudo_residual' not in extra
  opt.update(grads, state, params, **extra)


@pytest.mark.parametrize('fisher', ['sampled', 'empirical'])
@pytest.mark.parametrize('wrap', [
    'plain', 'chain', 'apply_if_finite', 'multi_steps', 'inject'])
def test_pseudo_residual_extras_pass_through_jit_and_wrappers(fisher, wrap):
  # A Python True among the extras arrived traced under jax.jit and was
  # refused; the marker is structure, so every wrapper passes it on.
  params = {'w': jnp.zeros((3, 2))}

  def apply(p, x):
    return x @ p['w']

  def learner(**hyper):
    return mso.bayesian_multiscale(
        decays=hyper.get('decays', [0.9]),
        process_variances=hyper.get('process_variances', [0.19]),
        noise_variance=1.0)

  opt = {
      'plain': lambda: learner(),
      'chain': lambda: optax.chain(optax.identity(), learner()),
      'apply_if_finite': lambda: optax.apply_if_finite(learner(), 3),
      'multi_steps': lambda: optax.MultiSteps(learner(), 2),
      'inject': lambda: optax.inject_hyperparams(learner)(
          decays=[0.9], process_variances=[0.19]),
  }[wrap]()
  _, grads, extra = mso.categorical_observation(
      apply, params, jnp.ones(3), jnp.asarray(1), fisher=fisher,
      key=jax.random.key(0) if fisher == 'sampled' else None)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params, **extra)
  expected, _ = learner().update(grads, learner().init(params), params,
                                 **extra)
  if wrap != 'multi_steps':  # MultiSteps applies every second step
    # One update, jitted or not: equal up to float32 rounding of the
    # few-term sums (a few ulps of the largest entry).
    np.testing.assert_allclose(updates['w'], expected['w'], rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(
                                   expected['w']))))


def test_pseudo_residual_must_be_a_python_bool():
  opt = mso.bayesian_multiscale([0.9], [0.19], 1.0)
  params = jnp.zeros(2)
  with pytest.raises(TypeError, match='pseudo_residual'):
    opt.update(params, opt.init(params), params, jacobian=params,
               residual=jnp.zeros(1), pseudo_residual=jnp.asarray(True))
