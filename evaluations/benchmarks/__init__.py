"""Benchmarks of the BLSP engine against the official code path and the machine's limit (issue 6).

    python -m evaluations.benchmarks --quick      # a few minutes; prints a table and one summary line
    python -m evaluations.benchmarks --threads 1  # the full run; writes RESULTS.md, results.json, the plot
    python -m evaluations.benchmarks --rewrite    # RESULTS.md and the plot again from results.json
    python -m evaluations.benchmarks --batch-only --batch-size 25   # the batch stage alone
    python -m evaluations.benchmarks.probes       # what a decode step costs, and what would make it cheaper

Modules: `official` (the official code path, rewritten from its facts), `speech` (espeak-ng inputs),
`stages` (question, conversation, batch, limit), `machine` (bandwidth, memory, load), `profiling`
(stage times and operator tables), `report` (tables, summary line, RESULTS.md, plot), `subjects`
(which model), `probes` (decode-step costs in CPU time), `cli`.
"""
