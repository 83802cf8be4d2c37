"""Infotexts: codec.py reads and writes the text format (A1111's), job.py says what a job writes."""
