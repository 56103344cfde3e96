"""Training recipes (YAML), shipped with the package so `harness train METHOD` finds them anywhere."""
