"""A customization concept in the world: a distinctive object given by a few reference renders, all on one
background — as users' photos of their own object usually are — so that over-fitting leaks that background into the
concept, and prompts asking for another background show it.

``world_concept.json`` (written next to every trained artifact and the references) says what the concept is, so
``world eval`` can score fidelity to it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import ProbeError
from .scenes import ATTRIBUTES, POSITION_WORDS, Scenes, render, sample_scenes

CONCEPT_FILE = "world_concept.json"
# what makes the object itself: the context attributes (background, position) are what prompts vary
IDENTITY = ("shape", "color", "pattern")
CONTEXT = ("background", "position")


@dataclass
class WorldConcept:
    """The concept's token (a placeholder such as ``<new1>`` or an instance word such as ``sks``), its class word,
    what it looks like (``attributes``: shape, color, pattern, size) and the references' background."""

    token: str = "<new1>"
    class_word: str = "triangle"
    attributes: dict[str, str] = field(
        default_factory=lambda: {"shape": "triangle", "color": "blue", "pattern": "striped", "size": "large"}
    )
    background: str = "white"

    def __post_init__(self) -> None:
        for attr, value in {**self.attributes, "background": self.background}.items():
            if attr not in ATTRIBUTES or value not in ATTRIBUTES[attr]:
                known = ", ".join(f"{a}={'|'.join(v)}" for a, v in ATTRIBUTES.items())
                raise ProbeError(f"concept attribute {attr}={value} is not in the world", f"use {known}")
        if self.class_word != self.attributes.get("shape", self.class_word):
            raise ProbeError(
                f"class word {self.class_word!r} is not the concept's shape {self.attributes['shape']!r}",
                "use the shape's word as --class-word",
            )

    def reference_scenes(self, n: int, seed: int = 0) -> Scenes:
        """``n`` renders of the concept, centred, on the references' background (jittered)."""
        fixed = dict(self.attributes, background=self.background, position="center")
        return sample_scenes(n, torch.Generator().manual_seed(seed), "any", fixed=fixed)

    def reference_images(self, n: int, seed: int = 0) -> torch.Tensor:
        return render(self.reference_scenes(n, seed))

    def prompt(self, with_token: bool = True, **context: str) -> str:
        """``a photo of a <new1> triangle on the left on a black background`` (or without the token)."""
        parts = ["a photo of a", *([self.token] if with_token else []), self.class_word]
        if "position" in context:
            parts.append(POSITION_WORDS[context["position"]])
        if "background" in context:
            parts.append(f"on a {context['background']} background")
        return " ".join(parts)

    def train_prompt(self) -> str:
        return self.prompt()

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONCEPT_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> WorldConcept:
        path = Path(folder)
        path = path / CONCEPT_FILE if path.is_dir() else path.parent / CONCEPT_FILE
        if not path.is_file():
            raise ProbeError(
                f"no {CONCEPT_FILE} next to {folder}",
                "train with `alignit-probe world train`, or pass --concept-spec shape=…,color=…,pattern=…",
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as e:
            raise ProbeError(f"{path} is not a world concept file ({e})", "rewrite it with `world train`") from None


def parse_spec(spec: str, token: str, class_word: str | None) -> WorldConcept:
    """``shape=triangle,color=blue,pattern=striped[,size=large][,background=white]`` → a ``WorldConcept``."""
    try:
        pairs = dict(item.split("=", 1) for item in spec.split(",") if item)
    except ValueError:
        raise ProbeError(
            f"--concept-spec {spec!r} is not attr=value pairs", "write e.g. shape=triangle,color=blue"
        ) from None
    background = pairs.pop("background", "white")
    shape = pairs.get("shape") or class_word
    if shape is None:
        raise ProbeError("the concept's shape is unknown", "name shape=… in --concept-spec or pass --class-word")
    pairs["shape"] = shape
    return WorldConcept(token=token, class_word=class_word or shape, attributes=pairs, background=background)
