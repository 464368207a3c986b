"""The ``sim`` driver: plausible values generated from a profile, no hardware."""
