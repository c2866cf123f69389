//! Results analysis: runs.jsonl -> tables, plots, reports.
