"""DASB-style downstream probes on frozen tokens or continuous features (issue: Table 2)."""
