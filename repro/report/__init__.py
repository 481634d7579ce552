"""Every table and figure of the harness: accuracy tables with intervals (main_table, uncertainty), FLOPs,
latency and check tables, figures; writers in tables.py. The CLI is a thin layer over these."""
