"""Workbench sessions: typed ops, the history graph, the tensor store, replay and export."""
