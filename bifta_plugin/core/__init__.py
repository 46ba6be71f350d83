"""Pure math of the method: torch only, no I/O, no FiftyOne/open_clip."""
