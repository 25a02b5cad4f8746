"""Reliability scenarios against the real app (issue 7): bad inputs, many sessions at once, a
SIGKILL mid-load, judge outages, leaks. The tests in tests/test_hardening_*.py run them with small
counts; `python -m evaluations.reliability` runs them in full and writes REPORT.md."""
