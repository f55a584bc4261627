"""lesion_jax: skin-lesion segmentation in JAX/Flax, after Andrade et al. (mobile dermatology)."""

__version__ = "0.1.0"
