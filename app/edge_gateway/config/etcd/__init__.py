"""Fleet configuration in etcd: the five tables of one gateway under one key prefix (README.md here)."""
