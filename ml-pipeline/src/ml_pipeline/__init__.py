"""ml-pipeline: the feature definition, Spark preprocessing and autoencoder training."""
