"""Benchmarks behind `hyperfrac bench ...`: speed and memory as ratios to the residual."""
