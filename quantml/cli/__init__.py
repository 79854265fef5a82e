"""Thin console entrypoints: parse arguments/config, call the library."""
