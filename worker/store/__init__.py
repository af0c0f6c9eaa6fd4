"""Persistence: one module per collection family, its indexes beside its queries."""
