"""The code's shape stays readable: no import cycle of any kind (lazy and type-only imports
count), no function over 100 lines, no module over 700 (docs/architecture.md)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lesion_jax"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 700


def _modules() -> dict[str, pathlib.Path]:
  modules = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
  """The lesion_jax modules one import statement names (the deepest known module of each)."""
  def deepest(name: str) -> str | None:
    while name and name not in known:
      name = name.rpartition(".")[0]
    return name or None

  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:
      package = module.split(".") if is_package else module.split(".")[:-1]
      base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
             for alias in node.names]
  return {found for found in map(deepest, names) if found and found != module}


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    tree = ast.parse(path.read_text())
    graph[module] = set().union(*[
        _imported(node, module, path.name == "__init__.py", set(modules))
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))])
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for other in graph.get(node, ()):
      if other not in index:
        visit(other)
        low[node] = min(low[node], low[other])
      elif other in on_stack:
        low[node] = min(low[node], index[other])
    if low[node] == index[node]:
      component = []
      while not component or component[-1] != node:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import():
  # The same walk over a made-up graph: a -> b -> c -> a is one cycle, d alone is none.
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  tree = ast.parse("def f():\n  from lesion_jax import train\n")
  node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
  assert _imported(node, "lesion_jax.loop", False, {"lesion_jax.train", "lesion_jax.loop"}) == {
      "lesion_jax.train"}


def test_no_import_cycle_of_any_kind():
  graph = import_graph()
  assert "lesion_jax.spec" in graph["lesion_jax.loop"]  # the walk sees the package's imports
  assert cycles(graph) == []


def test_no_long_function_and_no_long_module():
  long_functions, long_modules = [], []
  for path in sorted(PACKAGE.rglob("*.py")):
    text = path.read_text()
    if text.count("\n") > MAX_MODULE_LINES:
      long_modules.append(f"{path.name}: {text.count(chr(10))} lines")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
          long_functions.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
  assert long_functions == [] and long_modules == []
