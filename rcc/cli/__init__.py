"""The headless command line: ``rcc-tui <command>``."""
