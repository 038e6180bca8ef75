"""Exported models, format-agnostic: one module per task, one per file format, one drawing module.

- ``<task>.py``: ``wrap(net, contract)`` (preprocessing, the network and the task's outputs in one graph with
  a ``forward`` alone; thresholds and statistics as buffers; ``outputs`` names what it returns),
  ``records(outputs, contract, sizes, options)`` (plain, JSON-ready results), and how ``predict`` and the
  app show them: ``line``, ``picture``, ``save``, ``add_arguments``.
- ``formats.py``: how each format (``.pt2``, ``.onnx``, ``.pt``) is written and loaded into a callable, the
  contract inside the file.
- ``runtime.py``: ``load(path)`` gives a ``Model`` whatever the format, ``predict(model, images)`` records.
- ``draw.py``: overlays, heat maps and boxes for TensorBoard figures, ``predict`` and the app alike.

Nothing here imports Lightning, Hydra or cnnlab's training code; a model's contract names its task's module.
"""
