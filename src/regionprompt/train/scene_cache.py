"""Moved to :mod:`regionprompt.world.scene_cache` (a world artefact, read by models and evaluation too);
this path re-exports it for one release."""

from regionprompt.world.scene_cache import SceneCache, SceneCacheSpec, build_scene_cache

__all__ = ["SceneCache", "SceneCacheSpec", "build_scene_cache"]
