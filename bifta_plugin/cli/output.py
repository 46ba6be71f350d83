"""Terminal output helpers shared by the CLI commands."""

import sys


def notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def banner(title: str, lines) -> None:
    bar = "!" * 78
    text = (
        [bar, f"!! BiFTA demo: {title}"]
        + [f"!!   {line}" for line in lines]
        + [bar]
    )
    print("\n".join(text), file=sys.stderr, flush=True)


def print_table(rows) -> None:
    widths = [
        max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))
    ]
    for row in rows:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths)
            ).rstrip()
        )
