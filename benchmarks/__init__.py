"""Benchmark programs, kept out of the library: quality (one data set end to end), scale (N events), API load."""
