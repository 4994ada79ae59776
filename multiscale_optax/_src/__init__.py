"""Implementation modules; import from ``multiscale_optax`` instead."""
