"""Simulators of real devices, usable as pytest fixtures and as command-line tools."""
