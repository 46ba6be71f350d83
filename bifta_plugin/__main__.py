"""``python -m bifta_plugin``: see :mod:`bifta_plugin.cli`."""

from .cli.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
