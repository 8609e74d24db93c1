"""Features: the encoded split (vocabulary, integer interactions, statistics) and (user, candidate) ranking features."""
