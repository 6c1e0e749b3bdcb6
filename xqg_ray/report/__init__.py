"""The research question's answer: cost probes, query-time probes and the report (product code)."""
