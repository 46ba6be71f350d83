"""The command line: python -m bifta_plugin ..."""
