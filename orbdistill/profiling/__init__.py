"""Profiling: parameters, FLOPs, latency and memory of teachers and students."""

from .analyzer import analyze, default_structure
from .flops import OpCounter
from .report import compare_reports, write_report

__all__ = ["analyze", "default_structure", "OpCounter", "write_report", "compare_reports"]
