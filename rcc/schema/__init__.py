"""The engine's records and names that need no torch: what plans, ops and the app's forms are made of.

Importing anything here never imports torch (an import contract in .importlinter checks it), so
the CLI's argument checks, plan files and the app's editor read them without loading torch.
"""
