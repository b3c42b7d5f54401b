"""What every stage needs: typed settings, Vault secrets, logging and storage paths."""
