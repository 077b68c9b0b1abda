"""reflowes: batches of workflow runs over an embedded SQLite event log.

This module holds only the program API (`import reflowes as rf`).
"""
