"""Evaluation: zero-shot classification, retrieval, captioning, efficiency."""
