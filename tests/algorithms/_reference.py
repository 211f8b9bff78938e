"""An independent reference for the local-update gossip algorithms: plain Python loops over
rounds, nodes and steps, the optimizer written out as torch's SGD does it, SAM written out.

Nothing here calls dfl.local, dfl.sam or the algorithm builders. The batch order follows the
documented contract of dfl/local.py: in round t node i's stream is epoch 0, 1, ..., epoch e the
order of uniform(fold_in(node_key, e), (L,)) over the node's n samples, cut into ceil(n / B)
batches (the last one short), node_key = fold_in(fold_in(train_key, t), i).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

AUGMENT_STREAM = 2**31 - 3  # dfl/local.py's documented augmentation stream tag


def epoch_order(node_key, e: int, n: int, width: int) -> np.ndarray:
  u = np.asarray(jax.random.uniform(jax.random.fold_in(node_key, e), (width,)))
  return np.argsort(np.where(np.arange(width) < n, u, 2.0), kind="stable")[:n]


def stream_batches(node_key, n: int, width: int, batch: int, steps: int) -> list[np.ndarray]:
  """The first `steps` batches (shard positions) of a node's round stream."""
  out, e = [], 0
  while len(out) < steps:
    order = epoch_order(node_key, e, n, width)
    out += [order[j:j + batch] for j in range(0, n, batch)]
    e += 1
  return out[:steps]


def plain_loss(model):
  """Mean softmax cross-entropy over the rows given (no mask: the rows are the valid ones)."""
  def loss(params, x, y):
    logits = model.apply({"params": params}, x)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
  return loss


@functools.lru_cache(maxsize=None)
def _grad(model):
  return jax.jit(jax.grad(plain_loss(model)))


def _norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.asarray(l, np.float64) ** 2) for l in jax.tree.leaves(tree))))


def reference_run(model, params0, x, y, indices, sizes, W, *, train_key, rounds: int, lr: float,
                  batch: int, steps=None, epochs: int = 0, rho: float = 0.0,
                  momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                  clip_norm=None, lr_decay: float = 1.0, gossip_steps: int = 1,
                  keep_state: bool = False, augment=None, stats=None):
  """Runs the rounds; returns (params per node, momentum buffers per node), numpy trees.

  steps: K local steps per node, or epochs = E: node i takes E * ceil(n_i / B) steps.
  stats (a dict, optional) collects 'clipped' (steps whose gradient norm exceeded clip_norm).
  """
  grad = _grad(model)
  n_nodes, width = indices.shape
  to_np = lambda t: jax.tree.map(lambda a: np.array(a, np.float32), t)
  params = [to_np(jax.tree.map(lambda a: a[i], params0)) for i in range(n_nodes)]
  bufs = [None] * n_nodes
  for t in range(rounds):
    lr_t = lr * lr_decay ** t
    round_key = jax.random.fold_in(train_key, t)
    trained = []
    for i in range(n_nodes):
      node_key = jax.random.fold_in(round_key, i)
      n = int(sizes[i])
      k_i = epochs * -(-n // batch) if epochs else steps
      w = params[i]
      buf = bufs[i] if keep_state else None
      for k, positions in enumerate(stream_batches(node_key, n, width, batch, k_i)):
        rows = indices[i][positions]
        xb, yb = x[rows], y[rows]
        if augment is not None:
          akey = jax.random.fold_in(jax.random.fold_in(node_key, AUGMENT_STREAM), k)
          xb = np.asarray(augment(akey, jnp.asarray(xb)))
        g = to_np(grad(w, xb, yb))
        if rho:
          scale = rho / (_norm(g) + 1e-12)
          g = to_np(grad(jax.tree.map(lambda p, gi: p + scale * gi, w, g), xb, yb))
        if clip_norm is not None:
          norm = _norm(g)
          if norm > clip_norm:
            g = jax.tree.map(lambda gi: gi * (clip_norm / norm), g)
            if stats is not None:
              stats["clipped"] = stats.get("clipped", 0) + 1
        if weight_decay:
          g = jax.tree.map(lambda gi, p: gi + weight_decay * p, g, w)
        if momentum:
          buf = g if buf is None else jax.tree.map(lambda b, gi: momentum * b + gi, buf, g)
          d = jax.tree.map(lambda gi, b: gi + momentum * b, g, buf) if nesterov else buf
        else:
          d = g
        w = jax.tree.map(lambda p, di: p - lr_t * di, w, d)
      bufs[i] = buf
      trained.append(w)
    for _ in range(gossip_steps):
      trained = [jax.tree.map(lambda *ps: sum(W[i, j] * ps[j] for j in range(n_nodes)), *trained)
                 for i in range(n_nodes)]
    params = trained
  return params, bufs
