"""Progressive delivery: the pure decision, the Prometheus client, the analysis step.

`decision` is a pure function of (policy, state, samples, now) so it can be table- and
property-tested; `promql` is the only part that talks to Prometheus.
"""
