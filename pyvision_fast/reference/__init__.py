"""Plain-PyTorch implementations of every op: the oracle of the tests and the fallback backend."""
