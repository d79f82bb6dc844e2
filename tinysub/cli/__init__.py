"""The `tinysub` command line."""
