"""The data: the embedded MNIST subset, CSV and IDX files."""
