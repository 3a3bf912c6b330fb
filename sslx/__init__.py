"""sslx: self-supervised contrastive pretraining of image encoders in JAX/Flax.

`sslx.load_encoder(workdir)` (sslx.encoder) is imported on first use, so `import sslx` starts neither JAX nor TF.
"""
__version__ = "0.1.0"   # setup.py reads it from here


def __getattr__(name: str):
    if name in ("load_encoder", "Encoder"):
        from sslx import encoder
        return getattr(encoder, name)
    raise AttributeError(f"module 'sslx' has no attribute {name!r}")
