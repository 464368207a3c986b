"""The profile library: real device profiles, ``<vendor>/<model>.yaml``."""
