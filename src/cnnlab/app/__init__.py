"""A small web app that serves one exported model: ``cnnlab-app [MODEL]`` (``python -m cnnlab.app.server``).

It needs the serving code alone (``cnnlab.serving``, ``cnnlab.data.io``): no Lightning, no Hydra, no training
code, so it runs wherever an exported model and torch (onnxruntime for ``.onnx``) do.
"""
