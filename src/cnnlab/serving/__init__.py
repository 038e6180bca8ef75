"""Exported models and what ``predict`` shows of them, one module per task; torch and torchvision only.

Each module holds ``Exported`` (the network with its preprocessing and output step, TorchScript-able, with the
contract as attributes) and ``add_arguments`` / ``show`` for ``cnnlab.predict``. An exported model names its
module in its ``serving`` attribute, so ``predict`` (and any app) finds the right one without a task list.
"""
