"""ComfyUI's PNG chunks read as a generate recipe, when the graph is a plain KSampler graph.

ComfyUI stores the graph it ran twice: `prompt` (the API format: node id -> class_type and inputs, a link written as
[node id, output slot]) and `workflow` (the editor's format: nodes with widget values, and a link table). A plain
graph is one KSampler whose model comes from a CheckpointLoaderSimple (through LoraLoader nodes), whose prompts are
CLIPTextEncode nodes with literal text (their CLIP through LoraLoader and CLIPSetLastLayer nodes), and whose latent is
an EmptyLatentImage at denoise 1. Anything else is refused (exit 2) by name: sdkit cannot know what it computed.

ComfyUI reads prompt weights `(word:1.2)` with its own maths (no mean restoration); sdkit applies A1111's, which is
said in the warning line when a prompt holds weights, like a CLIP strength that differs from a LoRA's model strength.
"""

from __future__ import annotations

import json
from typing import Any

from sdkit.errors import UserError
from sdkit.image_import import Imported, Resolver, find

# editor-format widget names per node type (the order of `widgets_values`)
WIDGETS = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPTextEncode": ("text",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
}


def load_graph(prompt: str | None, workflow: str | None, source: str) -> dict[str, Any]:
    """The graph in API format: the `prompt` chunk, else the `workflow` chunk converted."""
    for text, convert in ((prompt, lambda g: g), (workflow, from_workflow)):
        if not text:
            continue
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise UserError(f"{source}: its ComfyUI graph is not valid JSON") from None
        graph = convert(data) if isinstance(data, dict) else None
        if isinstance(graph, dict) and all(isinstance(n, dict) for n in graph.values()):
            return graph
    raise UserError(f"{source}: its ComfyUI graph is not a node table: not a graph ComfyUI wrote")


def from_workflow(workflow: dict[str, Any]) -> dict[str, Any] | None:
    """The editor format as API format (the node types sdkit reads: their widgets named, their links resolved)."""
    nodes, links = workflow.get("nodes"), workflow.get("links")
    if not isinstance(nodes, list) or not isinstance(links, list):
        return None
    source_of = {link[0]: [str(link[1]), link[2]] for link in links if isinstance(link, list) and len(link) >= 3}
    graph = {}
    for node in nodes:
        if not isinstance(node, dict):
            return None
        kind, values = node.get("type"), list(node.get("widgets_values") or [])
        names = WIDGETS.get(kind, ())
        if kind == "KSampler" and len(values) == len(names) - 1:  # no control_after_generate widget
            names = tuple(n for n in names if n != "control_after_generate")
        inputs = dict(zip(names, values, strict=False))
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("link") in source_of:
                inputs[slot.get("name")] = source_of[slot["link"]]
        graph[str(node.get("id"))] = {"class_type": kind, "inputs": inputs}
    return graph


class _Graph:
    def __init__(self, graph: dict[str, Any], source: str) -> None:
        self.graph, self.source = graph, source

    def refuse(self, why: str) -> UserError:
        return UserError(f"{self.source}: not a plain ComfyUI KSampler graph ({why}): sdkit cannot replay it")

    def node(self, link: Any, kinds: tuple[str, ...], what: str) -> tuple[dict[str, Any], int]:
        if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in self.graph):
            raise self.refuse(f"{what} is not connected to a node")
        node = self.graph[str(link[0])]
        if node.get("class_type") not in kinds:
            raise self.refuse(f"{what} comes from a {node.get('class_type')} node")
        return node.get("inputs") or {}, link[1]

    def value(self, inputs: dict[str, Any], name: str, kind: type, what: str) -> Any:
        value = inputs.get(name)
        if isinstance(value, bool) or not isinstance(value, kind if kind is not float else (int, float)):
            raise self.refuse(f"{what}'s {name} is {type(value).__name__ if value is not None else 'missing'}, not a literal")
        return value


def recipe_fields(prompt: str | None, workflow: str | None, resolver: Resolver, source: str, skip=frozenset()) -> Imported:
    """Generate-recipe fields for a plain KSampler graph; any other graph is a UserError saying why."""
    from sdkit import schedulers

    g = _Graph(load_graph(prompt, workflow, source), source)
    samplers = [n for n in g.graph.values() if n.get("class_type") in ("KSampler", "KSamplerAdvanced", "SamplerCustom",
                                                                        "SamplerCustomAdvanced")]
    if len(samplers) != 1 or samplers[0].get("class_type") != "KSampler":
        raise g.refuse(f"{len(samplers)} sampler nodes: {', '.join(n.get('class_type') for n in samplers) or 'none'}")
    ks = samplers[0].get("inputs") or {}
    out: dict[str, Any] = {name: g.value(ks, key, kind, "KSampler") for key, name, kind in
                           (("seed", "seed", int), ("steps", "steps", int), ("cfg", "cfg", float))}
    if g.value(ks, "denoise", float, "KSampler") != 1:
        raise g.refuse(f"denoise {ks['denoise']} (img2img)")
    choice = schedulers.resolve(g.value(ks, "sampler_name", str, "KSampler"), g.value(ks, "scheduler", str, "KSampler"))
    out.update(scheduler=choice.name, schedule_type=choice.schedule.lower())
    latent, _ = g.node(ks.get("latent_image"), ("EmptyLatentImage",), "the latent image")
    out.update(width=g.value(latent, "width", int, "EmptyLatentImage"), height=g.value(latent, "height", int, "EmptyLatentImage"))
    ignored: list[str] = []
    for key, name in (("positive", "prompt"), ("negative", "negative")):
        encode, _ = g.node(ks.get(key), ("CLIPTextEncode",), f"the {key} prompt")
        out[name] = g.value(encode, "text", str, f"the {key} CLIPTextEncode")
        if "(" in out[name] and "ComfyUI prompt weights" not in ignored:
            ignored.append("ComfyUI prompt weights (sdkit weights prompts with A1111's maths)")
        clip_loras, clip_skip = _clip_chain(g, encode.get("clip"), key)
        out["clip_skip"] = clip_skip
    model_loras, checkpoint = [], None
    link = ks.get("model")
    while checkpoint is None:
        if len(model_loras) > len(g.graph):
            raise g.refuse("the model's LoraLoader nodes form a loop")
        inputs, _ = g.node(link, ("LoraLoader", "CheckpointLoaderSimple"), "the model")
        if "ckpt_name" in inputs:
            checkpoint = g.value(inputs, "ckpt_name", str, "CheckpointLoaderSimple")
        else:
            model_loras.append((g.value(inputs, "lora_name", str, "LoraLoader"), g.value(inputs, "strength_model", float, "LoraLoader")))
            link = inputs.get("model")
    if "model" not in skip:
        out["model"] = find(resolver, "model", checkpoint, None, source)
    clip_strength = dict(clip_loras)
    for name, weight in model_loras:
        if clip_strength.get(name, weight) != weight:
            ignored.append(f"LoRA {name} CLIP strength {clip_strength[name]} (sdkit applies {weight} to both)")
    if model_loras and "lora" not in skip:
        out["lora"] = [{"path": find(resolver, "lora", name, None, source), "weight": w} for name, w in reversed(model_loras)]
    return Imported(out, ignored, "ComfyUI graph")


def _clip_chain(g: _Graph, link: Any, key: str) -> tuple[list[tuple[str, float]], int]:
    """The LoRAs (name, CLIP strength) and the clip skip between a CLIPTextEncode and its checkpoint."""
    loras, clip_skip = [], 1
    for _ in range(len(g.graph) + 1):
        inputs, _ = g.node(link, ("LoraLoader", "CLIPSetLastLayer", "CheckpointLoaderSimple"), f"the {key} prompt's CLIP")
        if "ckpt_name" in inputs:
            return loras, clip_skip
        if "stop_at_clip_layer" in inputs:
            clip_skip = -g.value(inputs, "stop_at_clip_layer", int, "CLIPSetLastLayer")
        else:
            loras.append((g.value(inputs, "lora_name", str, "LoraLoader"), g.value(inputs, "strength_clip", float, "LoraLoader")))
        link = inputs.get("clip")
    raise g.refuse(f"the {key} prompt's CLIP nodes form a loop")
