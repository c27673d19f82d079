"""Experiments run by ``jmeta run NAME``: each module has ``Config`` and ``main(config, run)``."""
