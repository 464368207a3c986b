"""Tests of the serial driver: checksums, fields, framers, profiles, and end to end over ptys."""
