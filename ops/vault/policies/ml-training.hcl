# ml-training: read its own KV v2 secret, nothing else. Token renewal and lookup of its own
# token come from Vault's built-in default policy.
path "secret/data/mlops/ml-training" {
  capabilities = ["read"]
}
