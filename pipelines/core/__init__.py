"""Plumbing every stage shares: typed parameters, project paths, atomic writes, one-line errors, the compute engine."""
