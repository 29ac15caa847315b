"""The ``local`` provider: this machine is the one host; services run supervised under a directory.

:mod:`.declaration` (pure), :mod:`.paths` (where things live), :mod:`.hosts` (machines as
directories), :mod:`.process` (one service as a supervised process here).
"""
