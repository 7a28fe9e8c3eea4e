"""`hatstream watch`: a watch-folder batch service.

- `scanner`: which files under IN_DIR are candidates, and when each has settled;
- `ledger`: the SQLite job ledger under OUT_DIR/.hatstream/ that makes restarts safe;
- `presets`: run settings from `pipelines/*.toml` and per-folder `hatstream.toml` overrides;
- `job`: one job as a child process running `hatstream.pipeline.run.run_file`;
- `service`: the loop that ties them together.
"""
