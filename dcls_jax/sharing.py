"""One parameter used by several layers: kernel sharing, and DCLS positions shared per stage.

In Flax NNX a parameter is a Variable object held by a layer. Layers that hold the SAME object share it:
``nnx.state`` lists it once (at the first path in graph order), its gradient is the sum of the contributions of
every use, and an optimiser counts, updates and weight-decays it once. So sharing is an assignment::

  blocks = [nnx.Conv(c, c, (9, 9), feature_group_count=c, rngs=rngs) for _ in range(depth)]
  sharing.tie([b for b in blocks], "kernel")        # one (9, 9, 1, c) kernel for every block

``tie`` shares any attribute (a plain kernel or bias, DCLS weights or positions) among chosen layers;
``GrowingWidth`` is the rule of the DCLS recipes (the reference's ``replace_depthwise_dcls``): layers created in
order get new positions whenever one is wider than every earlier one, else reuse the current positions, which is
one set per stage when widths grow by stage. ``paths`` and ``aliases`` say where a model holds each Variable, which
checkpoint converters need to map the reference's per-layer copies onto one leaf.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from flax import nnx
from flax.nnx import graph

Path = tuple[Any, ...]
Layer = TypeVar("Layer", bound=nnx.Module)


def tie(layers: Sequence[nnx.Module], name: str) -> Optional[nnx.Variable]:
  """Makes attribute ``name`` of every layer the first layer's Variable, and returns it.

  All layers must hold a Variable of the same shape and type under ``name``, or all None (an absent bias, the
  sigmas of a version without them): then nothing is tied and None is returned.
  """
  if not layers:
    raise ValueError("layers is empty: expected at least one layer to share from")
  shared = getattr(layers[0], name)
  for i, layer in enumerate(layers[1:], 1):
    other = getattr(layer, name)
    if shared is None and other is None:
      continue
    if (shared is None) != (other is None) or type(other) is not type(shared) or other.shape != shared.shape:
      raise ValueError(f"layers[{i}].{name} is {_describe(other)}, layers[0].{name} is {_describe(shared)}: only "
                       "Variables of one type and shape can be shared")
    setattr(layer, name, shared)
  return shared


def _describe(variable) -> str:
  return "None" if variable is None else f"a {type(variable).__name__} of shape {variable.shape}"


class GrowingWidth:
  """Shares the attributes ``names`` among layers made in order, a new set whenever the width grows.

  ``make(width, build)`` calls ``build()`` for a new layer; if a layer at least as wide was made before, the new
  layer's ``names`` are tied to the layer that started the current set. Widths growing by stage give one set per
  stage; two stages of equal width share one set, exactly as the reference does.
  """

  def __init__(self, names: Sequence[str] = ("positions", "sigmas")):
    self.names = tuple(names)
    self._owner: Optional[nnx.Module] = None
    self._width = 0

  def make(self, width: int, build: Callable[[], Layer]) -> Layer:
    layer = build()
    if self._owner is None or width > self._width:
      self._owner, self._width = layer, width
    elif width < self._width:
      raise ValueError(f"width={width}: narrower than the {self._width} channels of the current positions; the "
                       "reference rule only shares among layers of the current widest width")
    else:
      for name in self.names:
        tie([self._owner, layer], name)
    return layer


def _children(node) -> Iterator[tuple[Any, Any]]:
  return ((key, value) for key, value in graph.get_node_impl(node).node_dict(node).items()
          if not (isinstance(key, str) and key.startswith("_")))


def paths(node, variable_type: type | tuple[type, ...] = nnx.Variable) -> list[list[Path]]:
  """Every Variable of ``variable_type`` (a class or a tuple of classes) in ``node``, as the list of paths at which
  it is held (one list per object).

  A path is as in ``nnx.state(node).to_pure_dict()`` (attribute names, list indices); the first path of each list
  is the one ``nnx.state`` uses.
  """
  found: dict[int, list[Path]] = {}

  def visit(value, path: Path, seen: frozenset):
    if isinstance(value, nnx.Variable):
      if isinstance(value, variable_type):
        found.setdefault(id(value), []).append(path)
    elif graph.is_graph_node(value) and id(value) not in seen:
      for key, child in _children(value):
        visit(child, path + (key,), seen | {id(value)})

  visit(node, (), frozenset())
  types = variable_type if isinstance(variable_type, tuple) else (variable_type,)
  state = nnx.state(node, nnx.Any(*types))
  canonical = {tuple(p) for p in nnx.to_flat_state(state).paths}
  return [sorted(group, key=lambda p: p not in canonical) for group in found.values()]


def aliases(node, variable_type: type | tuple[type, ...] = nnx.Variable) -> list[list[Path]]:
  """The shared Variables of ``node``: the path lists of ``paths`` that hold more than one path."""
  return [group for group in paths(node, variable_type) if len(group) > 1]
