"""Use cases: each flow a front end offers, written once, for the app, the CLI and the Python API.

- ``sessions``: where sessions live, listing them, finding one by name or path, the latest one,
  a fresh directory for a new one.
- ``edit_preview``: the plan an ``edit_layers`` op would make, and what it would store.
- ``sensitivity``: scan layers one at a time (a session's live model or a loaded one) and store it.
- ``search``: create or join a study (its settings, the sensitivity seed), run it, apply a trial
  (checking out the node it was searched from first).
- ``export``: write a session node as a compressed, dense, ONNX or compressed-tensors model.
- ``outcomes``: what an applied op did, in the words both front ends print.

Front ends call these; none re-implements a flow. Nothing here imports a UI library.
"""
