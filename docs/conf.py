"""Sphinx configuration of wool's documentation site (``make docs``).

The build is offline: intersphinx reads the inventories shipped in ``_intersphinx/`` (see
its README) and never the network, and Mermaid diagrams are drawn in the reader's browser.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import wool  # noqa: E402

project = "wool"
author = "The wool developers"
copyright = "the wool developers"
release = wool.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
    "sphinxcontrib.mermaid",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx", "Thumbs.db", ".DS_Store"]
nitpicky = True
# Type variables and typing helpers in signatures name no page of their own.
nitpick_ignore = [
    ("py:class", "P"),
    ("py:class", "T"),
    ("py:class", "wool.routine._routine.P"),
    ("py:class", "wool.routine._routine.T"),
    ("py:class", "P.args"),
    ("py:class", "P.kwargs"),
    ("py:class", "wool.routine._routine._Decorator"),
    ("py:class", "wool._context.T"),
    ("py:class", "wool._context.D"),
    ("py:class", "wool.events._event.H"),
    # wool.otel's signature: OpenTelemetry ships no inventory in docs/_intersphinx/.
    ("py:class", "opentelemetry.trace.TracerProvider"),
]

# ------------------------------------------------------------------------ Markdown (MyST)

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4
myst_fence_as_directive = ["mermaid"]
# Diagrams are drawn by mermaid.js in the reader's browser (no mermaid-cli at build time);
# a diagram keeps its proportions instead of being squeezed into a fixed height.
mermaid_height = "auto"

# ------------------------------------------------------------------------ API reference

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# ------------------------------------------------------------------------ intersphinx

# Local inventories only: CI has no network but the package index, and a build must never
# wait on a download. The base URLs are where the links point in the built pages.
_INVENTORIES = Path(__file__).resolve().parent / "_intersphinx"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(_INVENTORIES / "python.inv")),
    "anyio": ("https://anyio.readthedocs.io/en/stable", str(_INVENTORIES / "anyio.inv")),
    "trio": ("https://trio.readthedocs.io/en/stable", str(_INVENTORIES / "trio.inv")),
}
intersphinx_timeout = 1

# ------------------------------------------------------------------------ HTML

html_theme = "furo"
html_title = f"wool {release}"
html_static_path: list[str] = []


def _public_target(target: str) -> str | None:
    """``wool.pool._pool.WorkerPool`` -> ``wool.WorkerPool`` for names wool exports."""
    if not target.startswith("wool.") or "._" not in target:
        return None
    parts = target.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part in wool.__all__:
            return ".".join(["wool", *parts[index:]])
    return None


def _resolve_private_paths(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    # Annotations name the module a class is defined in; the reference documents it where
    # users import it from.
    if node.get("refdomain") != "py":
        return None
    public = _public_target(node.get("reftarget", ""))
    if public is None:
        return None
    node["reftarget"] = public
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
    )


# Discovery implementations yield private publisher classes; the reference names the protocol
# they implement, which is all a caller may rely on.
_PRIVATE_PUBLISHER = re.compile(r"~?wool\.discovery\._\w+\._(?:No)?Publisher")


_CONTEXT_GENERATOR = re.compile(r"^~?(?:collections\.abc\.|typing\.)?AsyncGenerator\[(.*), None\]$")


def _public_return_types(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: Any, annotation: Any
) -> tuple[Any, Any] | None:
    if not annotation:
        return None
    new = _PRIVATE_PUBLISHER.sub("wool.DiscoveryPublisherLike", annotation)
    if inspect.isasyncgenfunction(getattr(obj, "__wrapped__", None)):
        # An @asynccontextmanager: what `async with` gives, not the generator behind it.
        new = _CONTEXT_GENERATOR.sub(r"\1", new)
    return (signature, new) if new != annotation else None


# Links in the README are relative to the repository root; the README is included from docs/.
_README_LINKS = [
    (re.compile(r"\[([^\]]+)\]\((?:examples/[^)]*/)\)"), r"`\1`"),  # a directory: no page
    (re.compile(r"\]\((examples/[^)]+|LICENSE)\)"), r"](../\1)"),
    (re.compile(r"\]\(CHANGELOG\.md\)"), "](changelog.md)"),
]


def _rebase_readme_links(
    app: Any, relative_path: Path, parent_docname: str, content: list[str]
) -> None:
    if relative_path.name != "README.md":
        return
    text = content[0]
    for pattern, replacement in _README_LINKS:
        text = pattern.sub(replacement, text)
    content[0] = text


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_private_paths)
    app.connect("include-read", _rebase_readme_links)
    app.connect("autodoc-process-signature", _public_return_types)
