"""Operating the pipeline: the local platform launcher, the Vault bootstrap, the runner."""
