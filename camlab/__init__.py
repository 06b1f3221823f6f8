"""camlab: class activation maps done properly (the reusable, installable parts)."""
__version__ = "0.1.0"
