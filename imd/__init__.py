"""imd: an instant-messaging daemon for delivery platforms."""

__version__ = "0.1.0"
