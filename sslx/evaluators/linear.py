"""Linear classification on cached frozen features (the fast linear-eval protocol)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from sslx.evaluators.features import Encode, split_features


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Per-dimension standardisation with train statistics, which makes one L2 strength fit all encoders."""
    mean = train.mean(0, keepdims=True)
    std = train.std(0, keepdims=True) + 1e-6
    return jnp.asarray((train - mean) / std), jnp.asarray((test - mean) / std)


def fit_logistic_regression(features: jax.Array, labels: jax.Array, num_classes: int, *,
                            l2: float, steps: int) -> dict[str, jax.Array]:
    """Multinomial logistic regression, full batch, L-BFGS (deterministic, no learning rate to tune)."""
    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

    def objective(p):
        logits = features @ p["w"] + p["b"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return nll + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def iteration(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(iteration, (params, solver.init(params)), None, length=steps)
    return params


def topk_accuracy(logits: jax.Array, labels: jax.Array, k: int) -> float:
    k = min(k, logits.shape[1])
    topk = jax.lax.top_k(logits, k)[1]
    return float(jnp.mean(jnp.any(topk == labels[:, None], axis=1)))


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, num_classes: int, *, l2: float, steps: int) -> dict[str, float]:
    """Top-1/top-5 on the test features of a classifier fit on the train features."""
    train_x, test_x = _standardize(train_features, test_features)
    fit = jax.jit(fit_logistic_regression, static_argnames=("num_classes", "steps"))
    params = fit(train_x, jnp.asarray(train_labels), num_classes, l2=l2, steps=steps)
    logits = test_x @ params["w"] + params["b"]
    test_y = jnp.asarray(test_labels)
    return {"top1": topk_accuracy(logits, test_y, 1), "top5": topk_accuracy(logits, test_y, 5)}


def classifier_loss(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array) -> jax.Array:
    logits = features @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def init_classifier(feature_dim: int, num_classes: int) -> dict[str, jax.Array]:
    # Zero init: uniform logits whatever the feature scale, and both linear-eval modes start from the same point.
    return {"w": jnp.zeros((feature_dim, num_classes)), "b": jnp.zeros((num_classes,))}


def classifier_optimizer(learning_rate: float, total_steps: int, *, momentum: float, nesterov: bool,
                         weight_decay: float) -> optax.GradientTransformation:
    """The linear-eval recipe of SimCLR/MoCo: momentum SGD (Nesterov), cosine decay, weight decay on w only."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    mask = {"w": True, "b": False}
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask),
                       optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


def sgd_on_features(features: np.ndarray, labels: np.ndarray, num_classes: int, optimizer: optax.GradientTransformation,
                    *, batch_size: int, epochs: int, seed: int) -> dict[str, jax.Array]:
    """The protocol's classifier training, on cached features: same optimizer, batch and epoch count.

    One reshuffle per epoch and the last partial batch dropped, as the augmented-crop iterator does, so both
    modes take the same number of steps.
    """
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels)
    steps = len(y) // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(y)} training examples")
    params = init_classifier(x.shape[1], num_classes)

    @jax.jit
    def epoch(carry, key):
        order = jax.random.permutation(key, len(y))[:steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            params, opt_state = carry
            grads = jax.grad(classifier_loss)(params, x[idx], y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, carry, order)[0]

    carry = (params, optimizer.init(params))
    for key in jax.random.split(jax.random.key(seed), epochs):
        carry = epoch(carry, key)
    return carry[0]


def classifier_accuracy(params: dict[str, jax.Array], features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    logits = jnp.asarray(features, jnp.float32) @ params["w"] + params["b"]
    labels = jnp.asarray(labels)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


class LinearProbe:
    """The fast linear probe of an encoder's frozen features: logistic regression fit on the train split (its first
    `cfg.probe_train_examples`), top-1/top-5 on the eval split of `data_cfg`; `cfg` is a pretraining's config.eval
    (batch_size, probe_train_examples, probe_l2, probe_steps)."""

    def __init__(self, cfg, data_cfg, mesh: Mesh, num_classes: int):
        self.cfg, self.data_cfg, self.mesh, self.num_classes = cfg, data_cfg, mesh, num_classes

    def run(self, encode: Encode) -> dict[str, float]:
        train = split_features(encode, self.data_cfg, self.data_cfg.train_split, self.mesh, self.cfg.batch_size,
                               self.cfg.probe_train_examples)
        test = split_features(encode, self.data_cfg, self.data_cfg.eval_split, self.mesh, self.cfg.batch_size)
        return linear_probe(*train, *test, self.num_classes, l2=self.cfg.probe_l2, steps=self.cfg.probe_steps)
