"""Statistics for the dashboards a county health commission reads (issue 6): aggregate queries
(:mod:`.queries`), their CSV/XLSX forms (:mod:`.export`) and the one fact the workflow did not
record yet, a recognised result re-used (:mod:`.recording`)."""
