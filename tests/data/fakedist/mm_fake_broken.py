"""A plugin whose import fails, as when a dependency is missing."""

raise ImportError("mm_fake_broken needs the 'definitely-not-installed' package")
