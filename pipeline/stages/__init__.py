"""One thin module per DVC stage: read config, call library functions, write outputs, log."""
