"""Training HAT: data, the loop, validation, Ray Train data parallelism. Imports models/metrics."""
