"""Mounted integration tests for daxfs (see conftest.py for the fixtures)."""
