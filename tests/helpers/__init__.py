"""Helpers shared by the tests of every stage (model writers, oracle access, reference quantizers)."""
