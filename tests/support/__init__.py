"""Test support code shared by several test files (real endpoints started on loopback)."""
