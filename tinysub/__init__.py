"""The composition root: the `tinysub` command line and the demo.

Everything here may import every layer below it (client, worker, services, storage,
experiments); nothing below imports it. See docs/architecture.md for the layers and the
import contract (`lint-imports`) that keeps them in order.
"""
