"""What composes with bayesian_multiscale, and what does not.

Each test pins one behaviour documented in the section "What composes" of
``docs/bayesian_multiscale.md``: where an optax wrapper or chain keeps the
update an exact Kalman update, and where it changes it (and how).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multiscale_optax as mso

DECAYS, PROCESS, NOISE = [0.9, 0.5], [0.19, 0.75], 0.5


def _bayes(**options):
  return mso.bayesian_multiscale(DECAYS, PROCESS, NOISE, **options)


def _observation(seed=0):
  rng = np.random.default_rng(seed)
  params = {'a': jnp.asarray(rng.normal(size=3)),
            'b': jnp.asarray(rng.normal(size=2))}
  jacobian = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)),
                          params)
  residual = jnp.asarray(3.0)
  grads = jax.tree.map(lambda j: -j * residual / NOISE, jacobian)
  return params, jacobian, residual, grads


def _assert_trees_close(actual, expected, atol=1e-6):
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_clipping_before_has_no_effect_when_the_residual_is_given():
  params, jacobian, residual, grads = _observation()
  plain = _bayes()
  chained = optax.chain(optax.clip_by_global_norm(1e-3), _bayes())
  expected, _ = plain.update(grads, plain.init(params), params,
                             jacobian=jacobian, residual=residual)
  got, _ = chained.update(grads, chained.init(params), params,
                          jacobian=jacobian, residual=residual)
  _assert_trees_close(got, expected)


def test_clipping_before_clips_the_gradient_term_but_not_s():
  # Without a residual the gradient is the observation's -r J e: clipping
  # shrinks the step but not the innovation variance S, so the update is
  # that of the learner fed the clipped gradient, not a Kalman update.
  params, jacobian, _, grads = _observation()
  clip = optax.clip_by_global_norm(0.1)
  clipped, _ = clip.update(grads, clip.init(params))
  plain = _bayes()
  expected, expected_state = plain.update(
      clipped, plain.init(params), params, jacobian=jacobian)
  chained = optax.chain(optax.clip_by_global_norm(0.1), _bayes())
  got, state = chained.update(grads, chained.init(params), params,
                              jacobian=jacobian)
  _assert_trees_close(got, expected)
  np.testing.assert_allclose(state[1].innovation_variance,
                             expected_state.innovation_variance)
  unclipped, _ = plain.update(grads, plain.init(params), params,
                              jacobian=jacobian)
  assert not np.allclose(unclipped['a'], got['a'])


def test_multi_steps_uses_the_mean_gradient_and_the_last_jacobian_only():
  # optax.MultiSteps averages the grads of k calls but passes the inner
  # update only the last call's extra arguments: every example but the last
  # is lost from J and S. Use a minibatch observation (N outputs) instead.
  params, first_jacobian, _, first_grads = _observation(1)
  _, last_jacobian, _, last_grads = _observation(2)
  multi = optax.MultiSteps(_bayes(), every_k_schedule=2)
  state = multi.init(params)
  _, state = multi.update(first_grads, state, params,
                          jacobian=first_jacobian)
  got, _ = multi.update(last_grads, state, params, jacobian=last_jacobian)
  mean_grads = jax.tree.map(lambda a, b: (a + b) / 2, first_grads,
                            last_grads)
  plain = _bayes()
  expected, _ = plain.update(mean_grads, plain.init(params), params,
                             jacobian=last_jacobian)
  _assert_trees_close(got, expected)


def test_multi_transform_gives_each_group_its_own_innovation_variance():
  # Two Bayesian groups are two filters: each S sums over its own group
  # only, as if the other group's weights were known exactly.
  params, jacobian, residual, grads = _observation()
  labels = {'a': 'first', 'b': 'second'}
  split = optax.multi_transform({'first': _bayes(), 'second': _bayes()},
                                labels)
  got, _ = split.update(grads, split.init(params), params,
                        jacobian=jacobian, residual=residual)
  for name in ('a', 'b'):
    alone = _bayes()
    expected, _ = alone.update(
        grads[name], alone.init(params[name]), params[name],
        jacobian=jacobian[name], residual=residual)
    np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-6)
  joint = _bayes()
  together, _ = joint.update(grads, joint.init(params), params,
                             jacobian=jacobian, residual=residual)
  assert not np.allclose(together['a'], got['a'])


def test_apply_if_finite_skips_non_finite_grads_and_the_learner_the_rest():
  params, jacobian, residual, grads = _observation()
  opt = optax.apply_if_finite(_bayes(), max_consecutive_errors=5)
  state = opt.init(params)
  bad_grads = jax.tree.map(lambda g: g * jnp.nan, grads)
  _, state = opt.update(bad_grads, state, params, jacobian=jacobian)
  assert int(state.notfinite_count) == 1
  assert int(state.inner_state.skipped_observations) == 0
  bad_jacobian = {'a': jacobian['a'].at[0].set(jnp.inf), 'b': jacobian['b']}
  _, state = opt.update(grads, state, params, jacobian=bad_jacobian,
                        residual=residual)
  assert int(state.inner_state.skipped_observations) == 1


def test_a_transformation_after_it_moves_params_away_from_the_belief():
  # Scaling the updates after the learner leaves the params off the
  # belief's mean: w0 + sum mu no longer equals the params.
  params, jacobian, residual, grads = _observation()
  opt = optax.chain(_bayes(), optax.scale(0.5))
  updates, state = opt.update(grads, opt.init(params), params,
                              jacobian=jacobian, residual=residual)
  new_params = optax.apply_updates(params, updates)
  belief = mso.get_bayesian_subweights(new_params, state)
  drift = jax.tree.map(lambda prior, old: prior - old, belief.prior_mean,
                       params)
  assert max(float(jnp.max(jnp.abs(leaf)))
             for leaf in jax.tree.leaves(drift)) > 1e-3
