"""Which mesh axis each parameter (and optimizer moment) is split over.

Only one kind of parameter sharding exists in this project: FSDP, i.e. one
dimension of a large parameter split over the mesh axis ``'fsdp'``; small
parameters are replicated. Two ways decide the dimension:

* Annotated parameters (created under ``nn.with_logical_partitioning``) carry
  logical dimension names. ``rules`` maps names to mesh axes; of the
  dimensions whose name maps to ``'fsdp'`` the biggest one that divides by the
  fsdp size is split.
* Plain parameters use the size rule: the largest dimension that divides by
  the fsdp size is split.

Either way, a parameter with fewer than ``min_size`` elements (the config's
``mesh.min_shard_size``) is replicated: splitting it costs more communication
than the memory it saves.
Optimizer moments that mirror the parameter tree get the parameters'
shardings; every other leaf of the train state follows the size rule, which
depends on the shape only, so identical shapes always shard identically.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from predvdm_jax.mesh import FSDP_AXIS

LogicalRules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]

DEFAULT_MIN_SIZE = 2**18

# The logical dimension names the models' kernels carry (models/conv.py KERNEL_AXES,
# models/unet.py DENSE_KERNEL_AXES); names not listed are replicated.
DEFAULT_LOGICAL_RULES: LogicalRules = (
    ("conv_in", FSDP_AXIS),
    ("conv_out", FSDP_AXIS),
    ("height", None),
    ("width", None),
)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def _spec_splitting(ndim: int, dim: int | None) -> PartitionSpec:
    if dim is None:
        return PartitionSpec()
    return PartitionSpec(*[FSDP_AXIS if d == dim else None for d in range(ndim)])


def _pick_dim(
    shape: tuple[int, ...], candidates: Sequence[int], fsdp_size: int, min_size: int
) -> int | None:
    """Largest candidate dim divisible by fsdp, or None. On ties the earlier, more major dim:
    its shards are contiguous, so all-gathers and reduce-scatters need no transposes."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return None
    best = None
    for d in candidates:
        if shape[d] % fsdp_size == 0 and (best is None or shape[d] > shape[best]):
            best = d
    return best


def size_based_spec(
    shape: Sequence[int], fsdp_size: int, min_size: int = DEFAULT_MIN_SIZE
) -> PartitionSpec:
    """The size rule for an unannotated array of this shape."""
    shape = tuple(shape)
    return _spec_splitting(len(shape), _pick_dim(shape, range(len(shape)), fsdp_size, min_size))


def _mesh_axes_of(name: str | None, rules: LogicalRules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, axes in rules:
        if logical == name:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    return ()


def logical_spec(
    shape: Sequence[int],
    names: Sequence[str | None],
    fsdp_size: int,
    rules: LogicalRules = DEFAULT_LOGICAL_RULES,
    min_size: int = DEFAULT_MIN_SIZE,
) -> PartitionSpec:
    """Spec for an annotated array: fsdp on its biggest divisible fsdp-mapped dim."""
    shape = tuple(shape)
    if len(names) != len(shape):
        raise ValueError(
            f"logical names {tuple(names)} do not match the parameter shape {shape}; "
            "give one name per dimension in nn.with_logical_partitioning"
        )
    candidates = [d for d, n in enumerate(names) if FSDP_AXIS in _mesh_axes_of(n, rules)]
    return _spec_splitting(len(shape), _pick_dim(shape, candidates, fsdp_size, min_size))


def unbox(tree: Any) -> Any:
    """Strips ``nn.Partitioned`` boxes, with no sharding constraint applied."""
    return jax.tree.map(lambda x: x.value if _is_boxed(x) else x, tree, is_leaf=_is_boxed)


def param_shardings(
    abstract_params: Any,
    mesh: Mesh,
    rules: LogicalRules = DEFAULT_LOGICAL_RULES,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Any:
    """NamedSharding per parameter, shaped like the *unboxed* parameter tree.

    Boxed leaves (``nn.LogicallyPartitioned``) use their logical names; plain
    ``nn.Partitioned`` boxes name mesh axes directly and are taken as given;
    unboxed leaves use the size rule.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]

    def one(x):
        if isinstance(x, nn.LogicallyPartitioned):
            spec = logical_spec(_shape(x.value), x.names, fsdp_size, rules, min_size)
        elif _is_boxed(x):
            spec = PartitionSpec(*x.names)
        else:
            spec = size_based_spec(_shape(x), fsdp_size, min_size)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_params, is_leaf=_is_boxed)


def state_shardings(
    abstract_state: Any,
    mesh: Mesh,
    rules: LogicalRules = DEFAULT_LOGICAL_RULES,
    *,
    params_sharding: Any = None,
    min_size: int = DEFAULT_MIN_SIZE,
) -> Any:
    """NamedSharding for every leaf of a train state (``.params`` required).

    ``params_sharding`` (from ``param_shardings`` on the boxed abstract
    parameters) carries logical annotations that the unboxed state has lost;
    without it the parameters follow the size rule. Any subtree with the
    parameters' tree structure (EMA copy, Adam moments) gets the parameters'
    shardings.
    """
    params = abstract_state.params
    if params_sharding is None:
        params_sharding = param_shardings(params, mesh, rules, min_size)
    params_def = jax.tree.structure(params)
    fsdp_size = mesh.shape[FSDP_AXIS]

    def mirrors_params(x):
        return params_def.num_leaves > 1 and jax.tree.structure(x) == params_def

    def one(x):
        if mirrors_params(x):
            return params_sharding
        return NamedSharding(mesh, size_based_spec(_shape(x), fsdp_size, min_size))

    return jax.tree.map(one, abstract_state, is_leaf=mirrors_params)


def fsdp_split_fraction(abstract_params: Any, shardings: Any) -> float:
    """The fraction of parameter elements split over ``fsdp`` (the rest are replicated)."""
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params)]
    split = [FSDP_AXIS in jax.tree.leaves(tuple(s.spec)) for s in jax.tree.leaves(shardings)]
    return sum(size for size, is_split in zip(sizes, split) if is_split) / max(1, sum(sizes))
