"""predq's command line: `predq up`, `predq models ...`, `predq api|worker|flower`."""

__version__ = "0.1.0"
