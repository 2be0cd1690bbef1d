"""Plots, tables and the HTML report, read from what runs wrote to disk. Imports neither torch nor transformers."""
