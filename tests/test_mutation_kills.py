"""Tests written against the mutants `make mutation` left alive in the core modules (README: Mutation testing)."""
