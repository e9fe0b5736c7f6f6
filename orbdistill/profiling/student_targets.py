"""Analysis targets for students; resolved by orbdistill.models when it is available."""

from __future__ import annotations


def student_target(obj, device=None):
    try:
        from orbdistill.models.analysis import student_target as _impl
    except ImportError:
        _impl = None
    if _impl is None:
        from orbdistill.teachers import available_teachers

        raise ValueError(f"Unknown model {obj!r}. Teachers that can be analysed: "
                         f"{', '.join(n for n in available_teachers() if n != 'emt')}.")
    return _impl(obj, device=device)
