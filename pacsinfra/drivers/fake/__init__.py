"""The fake driver: an in-memory hypervisor for the engine's tests and the contract suite."""
