"""Sharding: subweights follow their params on an 8-device CPU mesh.

The check runs in a subprocess because the device count is fixed by
``XLA_FLAGS`` before JAX starts, and the rest of the suite runs on one device.
"""

from __future__ import annotations

import textwrap

import helpers

_SCRIPT = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import multiscale_optax as mso

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ('data', 'model'))
    shardings = {
        'kernel': NamedSharding(mesh, P('data', 'model')),
        'bias': NamedSharding(mesh, P('model')),
        'scale': NamedSharding(mesh, P()),
    }
    params = {
        'kernel': jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32),
        'bias': jnp.ones(32, jnp.float32),
        'scale': jnp.ones((), jnp.float32),
    }
    params = jax.device_put(params, shardings)
    optimizer = optax.chain(
        optax.scale_by_adam(),
        mso.multiscale([0.1, -0.05, 0.02, 0.3], [1.0, 0.9, 0.2, 0.99],
                       state_dtype=jnp.bfloat16))
    state = optimizer.init(params)
    multiscale_state = state[1]
    assert len(multiscale_state.subweights) == 3
    for subweights in multiscale_state.subweights:
      for name, leaf in subweights.items():
        assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
            name, leaf.sharding)
        assert jax.typeof(leaf).shape == params[name].shape

    def step(params, state, grads):
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    grads = jax.tree.map(jnp.ones_like, params)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    hlo = jitted.lower(params, state, grads).compile().as_text()
    for collective in ('all-gather', 'all-reduce', 'all-to-all',
                       'collective-permute', 'reduce-scatter'):
      assert collective not in hlo, collective
    # Step counters are uncommitted scalars that jit replicates over the mesh;
    # every array that follows a param must keep its exact type.
    def array_types(tree):
      return [jax.typeof(leaf) for leaf in jax.tree.leaves(tree)
              if leaf.ndim > 0]

    types_before = array_types(state)
    new_params, new_state = jitted(params, state, grads)
    new_params, new_state = jitted(new_params, new_state, grads)
    assert array_types(new_state) == types_before
    for subweights in new_state[1].subweights:
      for name, leaf in subweights.items():
        assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
            name, leaf.sharding)
    for name, leaf in new_params.items():
      assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim)
    # Injected decays store every entry; the initial subweights are copies
    # that keep the sharding of the arrays given.
    params = new_params  # the first params were donated above
    fast = jax.tree.map(lambda leaf: 0.5 * leaf, params)
    injected = optax.inject_hyperparams(mso.multiscale)(
        learning_rates=np.asarray([0.1, 0.2]), decays=np.asarray([1.0, 0.9]),
        initial_subweights=[None, fast])
    injected_state = injected.init(params)
    injected_step = jax.jit(
        lambda p, s, g: injected.update(g, s, p), donate_argnums=(1,))
    _, injected_state = injected_step(params, injected_state, grads)
    assert len(injected_state.inner_state.subweights) == 2
    for subweights in injected_state.inner_state.subweights:
      for name, leaf in subweights.items():
        assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
            name, leaf.sharding)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(fast))
    print('SHARDING-OK')
''')


def test_subweights_are_sharded_like_their_params_without_gathers():
  helpers.run_on_eight_cpu_devices(_SCRIPT)
