"""data-fetch: GitHub pull requests into MongoDB, normalised, validated, idempotent."""
