"""The ``quantml`` command line: ``quantml train | tune | predict | registry ...``.

Thin entrypoints: compose the packaged Hydra config (``quantml/conf``) with ``key=value``
overrides, call the library, print what it returns. ``quantml.cli.main`` dispatches;
``quantml-train``, ``quantml-tune``, ``quantml-predict`` and ``quantml-registry`` are aliases
of the four subcommands.
"""
