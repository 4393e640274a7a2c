"""fechatter-notify: the notification back end of the Fechatter chat system.

This package is the command-line shell, the top layer: ``cli`` and its subcommands (``dev``, ``doctor``,
``provision``, ``publish``, ``dlq``), and the embedded servers ``dev`` and the tests run. It calls the
public faces of ``bridge``, ``workers``, ``gateway``, ``runtime``, ``events`` and ``settings`` and formats
what they answer; no package imports it (tests/test_layers.py).
"""

__version__ = "0.1.0"
