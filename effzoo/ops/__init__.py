"""Kernels and their pure-PyTorch references."""
