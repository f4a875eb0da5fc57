"""Small helpers every layer may use: atomic writes, seed derivation, the one image/mask resize,
formula-safe CSV writing (``csvsafe``),
scoped environment variables (``env``) and file digests (``digest``)."""
