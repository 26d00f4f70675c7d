"""Compression: plans, the DARE / Nullu / AlphaEdit stages and the recursive cascade."""
