"""The benchmark workloads in PyTorch, in two styles.

* "loop": the learn2learn pattern. One task at a time: the inner gradient
  with `torch.autograd.grad(create_graph=True)`, the query loss divided by
  the batch size, `backward()` per task into the shared `.grad`, then one
  Adam step.
* "func": `torch.func`: the inner loop with `torch.func.grad`, `vmap` over
  the task batch, `torch.func.grad` of the batch-mean query loss, then one
  Adam step.

Images are NCHW here; the weights and inputs of `workloads` are transposed
once, before timing. XLA's SAME padding is asymmetric for stride 2 (one
more row at the bottom), so the stride-2 convolutions pad explicitly: the
loss then equals metajax's to float32 rounding.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import func as tfunc

import workloads as wl

Params = dict


def _to_torch(weights) -> Params:
  """Flax-named NumPy weights -> flat {name: tensor} with torch layouts."""
  params = {}
  for layer, leaves in weights.items():
    for name, value in leaves.items():
      if name == "kernel" and value.ndim == 4:  # HWIO -> OIHW
        value = value.transpose(3, 2, 0, 1)
      params[f"{layer}/{name}"] = torch.tensor(np.ascontiguousarray(value),
                                               requires_grad=True)
  return params


def _conv4(params: Params, x, downsample: str):
  """conv4 features `[N, 64]` of NCHW images `x`."""
  for i in range(4):
    w, b = params[f"Conv_{i}/kernel"], params[f"Conv_{i}/bias"]
    if downsample == "stride":
      pad_h = wl.same_padding(x.shape[2], 2)
      pad_w = wl.same_padding(x.shape[3], 2)
      x = F.conv2d(F.pad(x, (*pad_w, *pad_h)), w, b, stride=2)
      x = F.relu(x)
    else:
      x = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2)
  return x.mean(dim=(2, 3))


def _classifier(params: Params, x):
  return (_conv4(params, x, "stride") @ params["head/kernel"]
          + params["head/bias"])


def _protonet_loss(params: Params, sx, sy, qx, qy):
  z = _conv4(params, torch.cat([sx, qx]), "max")
  zs, zq = z[:sx.shape[0]], z[sx.shape[0]:]
  onehot = F.one_hot(sy.long(), wl.WAYS).to(z.dtype)
  protos = (onehot.T @ zs) / onehot.sum(0)[:, None]
  logits = -((zq[:, None, :] - protos[None]) ** 2).sum(-1)
  return F.cross_entropy(logits, qy.long())


def _student_logits(params: Params, q):
  v = params["item_profile/embedding"][q]
  return (params["difficulty/embedding"][q, 0] + params["student/theta"][0]
          + v @ params["student/u"])


def _student_loss(params: Params, q, a, target):
  logits = _student_logits(params, q)
  losses = torch.where(target, F.softplus(logits) - a * logits,
                       torch.zeros_like(logits))
  count = target.sum().to(logits.dtype)
  return losses.sum() / torch.clamp(count + wl.STUDENT_PRIOR_ANSWERS, min=1.0)


def _inputs(workload: str, meta_batch: int):
  """Per-task tensors `(support..., query...)`, each with a task axis."""
  if workload in ("maml", "protonet"):
    b = wl.episodes(meta_batch)
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(
        x.transpose(0, 1, 4, 2, 3)))
    return (nchw(b.support_x), torch.from_numpy(b.support_y).long(),
            nchw(b.query_x), torch.from_numpy(b.query_y).long())
  b = wl.students(meta_batch)
  q = torch.from_numpy(b.questions).long()
  a = torch.from_numpy(b.answers.astype(np.float32))
  support = torch.zeros(q.shape, dtype=torch.bool)
  support[:, :wl.SUPPORT] = True
  return q, a, support, ~support


def _adapted_names(workload: str, params: Params):
  if workload == "student":
    return ["student/theta", "student/u"]
  return list(params)


def _task_loss(workload: str, inner_steps: int, params: Params, task,
               grad_fn):
  """Query loss of one task after `inner_steps` steps on its support.

  `grad_fn(loss_of_adapted, adapted) -> grads` is the framework's inner
  gradient, kept in the graph (second order).
  """
  if workload == "protonet":
    return _protonet_loss(params, *task)
  names = _adapted_names(workload, params)
  if workload == "maml":
    sx, sy, qx, qy = task
    support = lambda p: F.cross_entropy(_classifier(p, sx), sy)
    query = lambda p: F.cross_entropy(_classifier(p, qx), qy)
    lr = wl.MAML_INNER_LR
  else:
    q, a, s_mask, q_mask = task
    support = lambda p: _student_loss(p, q, a, s_mask)
    query = lambda p: _student_loss(p, q, a, q_mask)
    lr = wl.STUDENT_INNER_LR
  fast = dict(params)
  for _ in range(inner_steps):
    adapted = {n: fast[n] for n in names}
    grads = grad_fn(lambda ad: support({**fast, **ad}), adapted)
    fast.update({n: adapted[n] - lr * grads[n] for n in names})
  return query(fast)


def _loop_grad(loss_of, adapted):
  names = list(adapted)
  grads = torch.autograd.grad(loss_of(adapted), [adapted[n] for n in names],
                              create_graph=True)
  return dict(zip(names, grads))


def run(workload: str, style: str, inner_steps: int, meta_batch: int,
        repeats: int):
  """Times one meta-step of `workload` in `style` ("loop" or "func")."""
  weights = {"maml": lambda: wl.conv4_weights(wl.WAYS),
             "protonet": lambda: wl.conv4_weights(None),
             "student": wl.student_weights}[workload]()
  params = _to_torch(weights)
  optimizer = torch.optim.Adam(params.values(), lr=wl.OUTER_LR)
  inputs = _inputs(workload, meta_batch)

  def loop_step():
    optimizer.zero_grad()
    total = 0.0
    for t in range(meta_batch):
      task = tuple(x[t] for x in inputs)
      loss = _task_loss(workload, inner_steps, params, task, _loop_grad)
      (loss / meta_batch).backward()
      total += float(loss.detach())
    optimizer.step()
    return total / meta_batch

  def mean_loss(p):
    per_task = tfunc.vmap(
        lambda *task: _task_loss(workload, inner_steps, p, task,
                                 lambda f, ad: tfunc.grad(f)(ad)))(*inputs)
    return per_task.mean()

  def func_step():
    grads, loss = tfunc.grad_and_value(mean_loss)(
        {n: p.detach() for n, p in params.items()})
    for n, p in params.items():
      p.grad = grads[n]
    optimizer.step()
    return float(loss)

  step = {"loop": loop_step, "func": func_step}[style]
  t0 = time.perf_counter()
  first_loss = step()
  first_s = time.perf_counter() - t0
  times, losses = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - t0)
  return {"first_step_s": first_s, "times_s": times, "first_loss": first_loss,
          "second_loss": losses[0],
          "threads": torch.get_num_threads()}


def matmul_gflops(n: int = 3072, repeats: int = 20) -> float:
  """fp32 `[n, n] @ [n, n]` GFLOP/s through PyTorch, the best of `repeats`."""
  a = torch.randn(n, n)
  a @ a
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9
