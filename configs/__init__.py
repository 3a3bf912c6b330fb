"""The recipes: one `get_config()` per file. Installed as `sslx.configs`, so `--config NAME` finds them anywhere."""
