"""Peer benchmark: reflowes against Snakemake, redun, Luigi and an xargs floor (issue 6)."""
