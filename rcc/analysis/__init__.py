"""Analysis: which layers hurt when compressed, what changed, what each stage did, and whether it matters."""
