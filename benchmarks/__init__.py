"""hcsflow benchmarks (`make bench`)."""
