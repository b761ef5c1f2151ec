"""Benchmarks (`gridwatch bench`) and the camera clips they and the tests stream."""
