"""Benchmark session: records the machine, and prints each group's ratios against its fastest entry."""

from __future__ import annotations

import platform

import torch

from stmodels import _ext


def pytest_report_header(config):
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return (f"stmodels benchmarks: torch {torch.__version__}, device {device}, "
            f"threads {torch.get_num_threads()}, extension: {'built' if _ext.available() else _ext.load_error()}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.stats is not None and bench.stats.rounds:
            groups.setdefault(bench.group or "", []).append(bench)
    terminalreporter.section("median time and slowdown against the fastest in each group")
    for group, benches in sorted(groups.items()):
        fastest = min(b.stats.median for b in benches)
        terminalreporter.write_line(group)
        for bench in sorted(benches, key=lambda b: b.stats.median):
            terminalreporter.write_line(
                f"    {bench.param or bench.name:<44} {bench.stats.median * 1e3:10.3f} ms   x{bench.stats.median / fastest:7.2f}"
            )
