"""potstill: distill an expensive teacher into a small student you own, measured against the teacher."""

__version__ = "0.1.0"
