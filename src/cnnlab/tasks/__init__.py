"""LightningModules, one per kind of learning; each receives its network, never builds one."""
