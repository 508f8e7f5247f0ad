"""Optional integrations; each submodule needs its extra (``pip install 'prunekit[lightning]'``).

Import them explicitly (``from prunekit.integrations.lightning import ...``): nothing here is
imported by ``import prunekit``.
"""
