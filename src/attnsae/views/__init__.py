"""Rendering of results: plots (PNG) and tables (text). Computation lives upstream; views only draw plain data."""
