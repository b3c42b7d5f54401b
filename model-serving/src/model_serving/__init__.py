"""model-serving: FastAPI scoring of pull requests with the registered autoencoder."""
