"""Measurements on top of the methods: timing and memory, the benchmark, method comparisons, the ablations."""
