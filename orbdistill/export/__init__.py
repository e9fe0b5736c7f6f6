"""Export and packaging of students."""

from .package import read_card, write_package

__all__ = ["write_package", "read_card"]
