"""Activation patching sweeps."""
