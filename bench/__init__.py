"""Postage benchmark suite: Postage and its peers side by side on one local broker.

Run it with ``scripts/bench`` (starts a throwaway broker) or ``python -m bench``; see
``bench/README.md``. Nothing here is imported by Postage itself.
"""
