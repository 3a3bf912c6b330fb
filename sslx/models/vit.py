"""Vision Transformers (Dosovitskiy et al. 2021) as DINO and MoCo v3 pretrain them: class token, learned position
embeddings, pre-norm blocks, the class token after the final LayerNorm as the features.

Architecture (NHWC input):
  * patch embedding: a `patch_size` x `patch_size` conv of stride `patch_size` to `hidden_dim` channels;
  * a learned class token prepended; learned position embeddings for a grid of (image_size / patch_size)^2 patches
    (the class token's own position embedding would only add a second learned vector to it, so it has none).
    An input of another size (DINO's 96 px local crops of a 224 px model, an evaluation at another resolution)
    takes the embeddings resized bicubically to its grid, as DINO's `interpolate_pos_encoding` does;
  * `depth` blocks x + MHSA(LN(x)), x + MLP(LN(x)) with a GELU MLP of width `mlp_dim`;
  * output: LN of the class token, [batch, hidden_dim] in float32.

LayerNorm only, no BatchNorm and no dropout; stochastic depth (`drop_path_rate`, DINO's drop_path_rate 0.1 for
ViT-S/16) skips each block's residual branches for a random share of the examples, at rates rising linearly from 0
in the first block to `drop_path_rate` in the last, in train mode when the caller passes a 'dropout' rng (the online
network in pretraining, `sslx.methods.base.Method.forward`); without one (EMA teachers and targets, as DINO's teacher
has no drop path; evaluation) the encoder is deterministic. It has no `batch_stats`. Dense kernels, the class
token and the position embeddings start from a normal of std 0.02 truncated at two std (DINO's and timm's init).
Computation runs in `dtype`; parameters are float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT = nn.initializers.truncated_normal(0.02)


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda features, name: nn.Dense(features, kernel_init=INIT, dtype=self.dtype,  # noqa: E731
                                                param_dtype=jnp.float32, name=name)
        return dense(x.shape[-1], "dense2")(nn.gelu(dense(self.mlp_dim, "dense1")(x), approximate=False))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)); with `drop_path` > 0 each branch is
    zeroed for that share of the examples (the 'dropout' rng) and scaled by 1 / (1 - drop_path) for the others."""
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x):
        y = layer_norm(self.dtype, "norm1")(x)
        y = nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
                                            kernel_init=INIT, deterministic=True, name="attention")(y, y)
        x = x + self.drop_branch(y)
        y = MlpBlock(self.mlp_dim, self.dtype, name="mlp")(layer_norm(self.dtype, "norm2")(x))
        return x + self.drop_branch(y)

    def drop_branch(self, branch: jax.Array) -> jax.Array:
        if not self.drop_path:
            return branch
        # Dropout broadcast over tokens and channels: one keep-or-drop draw per example, i.e. stochastic depth.
        return nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=False)(branch)


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, name=name)


def resize_position_embeddings(embeddings: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """[h, w, dim] position embeddings resized bicubically to `grid` (unchanged when it is their own)."""
    if embeddings.shape[:2] == tuple(grid):
        return embeddings
    # No anti-aliasing, as torch's interpolate in DINO: each new position reads the nearby learned ones.
    return jax.image.resize(embeddings, (*grid, embeddings.shape[-1]), "bicubic", antialias=False)


class ViT(nn.Module):
    """ViT encoder: images [batch, height, width, 3] -> class-token features [batch, hidden_dim] in float32."""
    patch_size: int
    hidden_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    image_size: int   # the input side the position embeddings are made for
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0   # stochastic depth of the last block (linear from 0 in the first)
    block: type[EncoderBlock] = EncoderBlock   # nn.remat(EncoderBlock) recomputes each block in the backward pass

    @property
    def feature_dim(self) -> int:
        return self.hidden_dim

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"a {height}x{width} input does not split into {self.patch_size} px patches: use image "
                             f"and crop sizes that are multiples of the ViT's patch size (config.model.vit.patch_size)")
        return height // self.patch_size, width // self.patch_size

    @nn.compact
    def __call__(self, x, train: bool):
        grid = self.grid(*x.shape[1:3])
        x = nn.Conv(self.hidden_dim, (self.patch_size,) * 2, strides=self.patch_size, padding="VALID",
                    dtype=self.dtype, param_dtype=jnp.float32, name="patch_embedding")(x.astype(self.dtype))
        native = self.grid(self.image_size, self.image_size)
        embeddings = self.param("position_embedding", INIT, (*native, self.hidden_dim), jnp.float32)
        x = x + resize_position_embeddings(embeddings, grid).astype(self.dtype)
        x = x.reshape(x.shape[0], -1, self.hidden_dim)
        cls = self.param("cls_token", INIT, (1, 1, self.hidden_dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.hidden_dim)), x], axis=1)
        stochastic = train and self.drop_path_rate > 0 and self.has_rng("dropout")
        for index in range(self.depth):
            rate = self.drop_path_rate * index / max(self.depth - 1, 1) if stochastic else 0.0
            x = self.block(self.num_heads, self.mlp_dim, self.dtype, rate, name=f"block{index + 1}")(x)
        x = layer_norm(self.dtype, "norm")(x)
        return x[:, 0].astype(jnp.float32)

    def describe(self) -> dict[str, Any]:
        """The architecture for sslx-export's model.json."""
        return {"family": "vit", "patch_size": self.patch_size, "hidden_dim": self.hidden_dim, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "position_embedding_grid": list(self.grid(self.image_size, self.image_size)),
                "position_embedding_resize": "bicubic, no anti-aliasing, for inputs of another size",
                "attention_kernels": "query/key/value [hidden, heads, head_dim], out [heads, head_dim, hidden]",
                "layer_norm_epsilon": 1e-6, "features": "final LayerNorm of the class token",
                "feature_dim": self.feature_dim}


# (patch_size, hidden_dim, depth, num_heads, mlp_dim, image_size) of the named variants.
VITS = {
    "vit_s16": (16, 384, 12, 6, 1536, 224),     # ViT-S/16 (DeiT-S), DINO's and MoCo v3's small model
    "vit_b16": (16, 768, 12, 12, 3072, 224),    # ViT-B/16
    "vit_ti4": (4, 192, 12, 3, 768, 32),        # ViT-Ti with 4 px patches: an 8x8 grid on CIFAR's 32 px
}
VIT_FIELDS = ("patch_size", "hidden_dim", "depth", "num_heads", "mlp_dim", "image_size")
