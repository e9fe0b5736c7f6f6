"""Export and packaging of students.

``package`` and ``traced`` need model code; ``files`` and ``onnx_runtime`` (what the
exported backends of the calculator use) do not, so nothing is imported here eagerly.
"""

__all__ = ["write_package", "read_card", "export_package"]


def __getattr__(name):
    if name in ("write_package", "export_package"):
        from . import package

        return getattr(package, name)
    if name == "read_card":
        from orbdistill.packages import read_card

        return read_card
    raise AttributeError(f"module 'orbdistill.export' has no attribute {name!r}")
