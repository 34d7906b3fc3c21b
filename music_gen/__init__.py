"""music-gen: train and serve MusicGen-style text-to-music models on Ray."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["MusicGen", "__version__"]

if TYPE_CHECKING:
    from music_gen.models.generator import MusicGen


def __getattr__(name: str):
    # Lazy so that `import music_gen` (and `music-gen --help`) does not pay for torch.
    if name == "MusicGen":
        from music_gen.models.generator import MusicGen

        return MusicGen
    raise AttributeError(name)
