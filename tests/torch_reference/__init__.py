"""The PyTorch original's networks, written from the spec with their state_dict names: the
references of the parity tests (tests/interop) and the baselines of benchmarks/. They need
torch; predvdm_jax never imports them. Tests import ``torch_reference.<module>``; benchmarks,
run from the repository root, ``tests.torch_reference.<module>``."""
