"""What tests and benchmarks build for themselves: `tiny` (offline random-weight mT5 and BERT).

Never imported by the product: its models say nothing about quality or speed.
"""
