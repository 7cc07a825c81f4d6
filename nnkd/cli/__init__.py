"""Console scripts: each module parses arguments and calls into the package."""
