"""Small helpers every layer may use.

Atomic writes (``atomic``), seed derivation (``seeds``), the one image/mask resize (``resize``),
formula-safe CSV writing (``csvsafe``), scoped torch threads (``threads``), scoped environment
variables (``env``) and file digests (``digest``).
"""
