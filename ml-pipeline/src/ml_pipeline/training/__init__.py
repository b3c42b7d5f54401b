"""ml-training: fit the autoencoder on published features, track it in MLflow."""
