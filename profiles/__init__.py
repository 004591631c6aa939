"""Bundled ebmctl run profiles (TOML files in this folder)."""
