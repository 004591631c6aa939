"""Lets ``pytest examples/ebmctl-plugin-example/tests`` import ``ebmctl_example`` uninstalled:
pytest puts this file's folder on sys.path."""
