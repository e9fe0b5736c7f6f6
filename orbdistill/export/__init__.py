"""Export and packaging of students."""

from .package import export_package, read_card, write_package

__all__ = ["write_package", "read_card", "export_package"]
