"""The CORING library: ranking, channel selection, surgery, training, counting and the runs built on them.

Entry points live in ``main/`` (``python main/prune.py ...``) and import from here; this package imports
``models`` and ``data`` and never an entry point (``tests/test_layering.py`` holds that). See ``docs/design.md``.
"""
