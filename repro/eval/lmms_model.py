"""`ReproLMM`: the lmms-eval model class `repro` (a "simple" model; batch size 1 unless packed).

`model_args` (everything that changes outputs is one of them):

| key | meaning | default |
|---|---|---|
| `model` | a name `repro.load` knows (`tinyworld-llava`, registry names, tiny names) or a local directory / HF id | `tinyworld-llava` |
| `method` | a registered method (`python -m repro methods`), or `none` for the unpruned model | `none` |
| `budget` | `tokens:N`, `ratio:R` or `tflops:X` (see repro.budget), or `none` | `none` |
| `options` | method options as a JSON object, e.g. `{"keep":0.25,"seed":0}` | `{}` |
| `dtype` | `float32`, `bfloat16`, `float16` | `float32` |
| `attn` | attention backend: `sdpa`, `eager`, `flash_attention_2` | `sdpa` |
| `device` | `cpu`, `cuda`, `cuda:0`, ... | `cpu` |
| `batch_size` | samples packed into one pass (repro/engine/packed.py); 1 runs them one at a time | `1` |

Data parallelism: run under `accelerate launch --num_processes N` (see repro.eval.parallel); as in
lmms-eval's llava_hf, each process builds an `Accelerator()`, puts the model on
`cuda:{local_process_index}` (CPU: `cpu`) and sets `_rank`/`_world_size`/`accelerator`, and lmms-eval
shards the documents by rank. The model is not wrapped in DDP: inference needs no gradient sync.

`batch_size` (also lmms-eval's `--batch_size`): consecutive requests with the same generation
arguments run as one packed batch (`Model.generate_batch`: each sample keeps its own schedule;
equal to batch size 1 up to fp32 rounding, logits within 1e-5). The default is 1, which keeps
records bit-identical to the per-sample path; on the shared 2-core CPU packing 4 measured 1.2x on
tinyworld-llava (issue 27's note), and packed throughput on a GPU has not been measured yet. `max_batch_size` (added by lmms-eval) is
accepted and ignored. Any other key is an error that lists these.

Prompts: lmms-eval's stock `llava_hf` chat class sends `[images..., text]` through the processor's
chat template, where `text` is the task's `doc_to_text` (none of the thirteen paper tasks or the
tiny tasks defines `doc_to_messages`); `Model.prepare` builds exactly that from the simple
interface's `(context, doc_to_visual)`.

Per-sample log: each response is a `GenerationResult` whose `token_counts` (a `TokenCounts`
subclass) serialises, in the samples log (`log_samples=True`, CLI `--log_samples`), as
`{"input_tokens", "output_tokens", "repro": {...}}` with the prompt's sha256, the visual tokens
per layer and per operation, realized TFLOPs per FLOPs convention and the method/budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image

from repro.errors import InfeasibleBudget, ReproError

ACCEPTED = ("model", "method", "budget", "options", "dtype", "attn", "device", "model_options", "revision",
            "batch_size")
IGNORED = ("max_batch_size",)  # added by lmms-eval
DEFAULTS = {"model": "tinyworld-llava", "method": "none", "budget": "none", "options": "{}", "dtype": "float32",
            "attn": "sdpa", "device": "cpu", "model_options": "{}", "revision": "main", "batch_size": 1}
DTYPES = ("float32", "bfloat16", "float16")
ATTNS = ("sdpa", "eager", "flash_attention_2")
DEFAULT_MAX_NEW_TOKENS = 1024  # what lmms-eval's llava_hf uses when a task sets none


@dataclass
class ReproTokenCounts(TokenCounts):
    """TokenCounts that also carries repro's per-sample record into the samples log."""

    repro: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = super().to_dict()
        d["repro"] = self.repro
        return d


def _none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def parse_options(options: Any, key: str = "options", example: str = '{"keep":0.25,"seed":0}') -> dict[str, Any]:
    """A JSON object given in model_args (`options`: the method's, `model_options`: repro.load's)."""
    if _none(options):
        return {}
    if isinstance(options, dict):
        return dict(options)
    try:
        parsed = json.loads(options) if isinstance(options, str) else None
    except json.JSONDecodeError as err:
        raise ReproError(f"model_args {key}={options!r} is not valid JSON ({err.msg}); write e.g. {key}={example}") from None
    if not isinstance(parsed, dict):
        raise ReproError(f"model_args {key} must be a JSON object, got {options!r}")
    return parsed


def check_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """Accepted keys with defaults filled; ReproError listing the accepted keys on any other."""
    unknown = sorted(set(args) - set(ACCEPTED) - set(IGNORED))
    if unknown:
        raise ReproError(f"unknown model_args key(s) for --model repro: {', '.join(unknown)}; "
                         f"accepted: {', '.join(ACCEPTED)} (and lmms-eval's {', '.join(IGNORED)})")
    out = {**DEFAULTS, **{k: v for k, v in args.items() if k in ACCEPTED}}
    if str(out["dtype"]) not in DTYPES:
        raise ReproError(f"model_args dtype={out['dtype']!r}; choose one of {', '.join(DTYPES)}")
    if str(out["attn"]) not in ATTNS:
        raise ReproError(f"model_args attn={out['attn']!r}; choose one of {', '.join(ATTNS)}")
    from repro.devices import device_problem

    problem = device_problem(out["device"])
    if problem:
        raise ReproError(f"model_args {problem}")
    if not _none(out["budget"]):
        from repro.budget import as_budget

        try:
            as_budget(str(out["budget"]))
        except ReproError as err:
            raise ReproError(f"model_args budget: {err}") from None
    try:
        out["batch_size"] = int(out["batch_size"])
    except (TypeError, ValueError):
        out["batch_size"] = 0
    if out["batch_size"] < 1:
        raise ReproError(f"batch_size={args.get('batch_size')!r}: give a positive integer (1 runs samples one at a time)")
    return out


class ReproLMM(lmms):
    """lmms-eval model `repro`: `repro.load(model)` + `repro.method(method, budget, **options)`."""

    is_simple = True

    def __init__(self, *, loaded_model: Any = None, **kwargs: Any) -> None:
        """`loaded_model`: an already loaded `repro.Model` for `model` (the sweep runner loads each
        model once and builds one instance per method); otherwise `model` is loaded here."""
        super().__init__()
        import repro

        from . import parallel

        args = check_model_args(kwargs)
        self.model_args = args
        self.batch_size_per_pass = int(args["batch_size"])
        self.options = parse_options(args["options"])
        self.method_name = None if _none(args["method"]) else str(args["method"])
        self.budget = None if _none(args["budget"]) else str(args["budget"])
        if self.method_name is None and (self.options or self.budget):
            raise ReproError("model_args budget/options need a method (method=random, ...); "
                             "method=none is the unpruned model")
        # Build the method first: a bad method name or option fails before any weights load.
        self.method = repro.method(self.method_name, self.budget, **self.options) if self.method_name else None
        # As lmms-eval's HF classes: one Accelerator per process; with N > 1 processes this
        # process's device is cuda:{local rank} (or cpu) and rank/world size come from accelerate.
        self.accelerator = parallel.accelerator(str(args["device"]))
        self._device = parallel.process_device(str(args["device"]))
        if self.accelerator.num_processes > 1:
            self._rank = self.accelerator.local_process_index  # lmms-eval's evaluator then sets the global rank
            self._world_size = self.accelerator.num_processes
        # `loaded_model` must already be on `parallel.process_device(device)` (the sweep runner's is).
        model_options = parse_options(args["model_options"], "model_options", '{"protocol":"fixed"}')
        self.model = loaded_model if loaded_model is not None else repro.load(
            str(args["model"]), dtype=str(args["dtype"]), device=self._device,
            attn_implementation=str(args["attn"]), revision=str(args["revision"]), **model_options)

    @property
    def device(self) -> str:
        """This process's device (lmms-eval's evaluator puts its rank-gather tensors on it)."""
        return self._device

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """As lmms-eval's, but accepts a dict, and a `device` both in model_args and from lmms-eval
        (the CLI's `--device`) when they agree instead of failing with a duplicate keyword."""
        from lmms_eval import utils

        args = dict(arg_string) if isinstance(arg_string, dict) else utils.simple_parse_args_string(arg_string or "")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "device" in extra and "device" in args and str(extra["device"]) != str(args["device"]):
            raise ReproError(f"device given twice: model_args device={args['device']} and --device {extra['device']}")
        return cls(**{**extra, **args})

    @classmethod
    def create_from_arg_object(cls, arg_dict, additional_config=None):
        return cls.create_from_arg_string(dict(arg_dict or {}), additional_config)

    # ------------------------------------------------------------------ requests

    def generate_until(self, requests) -> list[GenerationResult]:
        from tqdm import tqdm

        out: list[GenerationResult] = []
        pending: list[tuple[str, list[Image.Image], dict[str, Any]]] = []
        for req in tqdm(requests, disable=len(requests) < 2 or self.rank != 0, desc="repro responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            item = (context, self._images(doc_to_visual(doc), task), dict(gen_kwargs or {}))
            if pending and (item[2] != pending[0][2] or len(pending) == self.batch_size_per_pass):
                out += self.respond_batch(pending)
                pending = []
            pending.append(item)
        return out + (self.respond_batch(pending) if pending else [])

    def clean(self) -> None:
        """lmms-eval calls this after every evaluation. Its default deletes `nn.Module` attributes
        (this class holds none) and runs two full garbage collections, about 1 s each with
        lmms-eval's task registry in memory: more than the whole evaluation of a small cell. The
        sweep runner reuses this instance (and its model's encoding cache) for every task of a
        row, so only the accelerator's cached blocks are released."""
        import torch

        if torch.cuda.is_available() and str(self._device).startswith("cuda"):
            torch.cuda.empty_cache()

    def generate_until_multi_round(self, requests):
        return self.generate_until(requests)

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the repro model answers generate_until requests only (the tiny tasks and the thirteen paper tasks "
            "are all generate_until); loglikelihood tasks are not supported")

    # ------------------------------------------------------------------ one sample

    def respond(self, context: str, images: list[Image.Image], gen_kwargs: dict[str, Any]) -> GenerationResult:
        until, max_new = self._generation(gen_kwargs)
        try:
            result = self.model.generate(images, context, method=self.method, max_new_tokens=max_new, stop=until)
        except InfeasibleBudget as err:
            return self._infeasible(context, err)
        return self._response(result)

    def respond_batch(self, items: list[tuple[str, list[Image.Image], dict[str, Any]]]) -> list[GenerationResult]:
        """Requests sharing their generation arguments; one packed pass when there are several
        (a pack holding a sample infeasible at this budget runs one sample at a time instead)."""
        if len(items) == 1:
            return [self.respond(*items[0])]
        until, max_new = self._generation(items[0][2])
        try:
            results = self.model.generate_batch([(images, context) for context, images, _ in items],
                                                method=self.method, max_new_tokens=max_new, stop=until)
        except InfeasibleBudget:
            return [self.respond(*item) for item in items]
        return [self._response(r) for r in results]

    @staticmethod
    def _generation(gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0 or \
                int(gen_kwargs.get("num_beams") or 1) > 1:
            raise ReproError(f"the repro model decodes greedily; the task asks for {gen_kwargs}")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        return until, int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)

    def _base(self) -> dict[str, Any]:
        return {"model": self.model.name, "method": self.method_name or "none", "budget": self.budget,
                "options": self.options}

    def _infeasible(self, context: str, err: InfeasibleBudget) -> GenerationResult:
        # no answer at this budget: scored as given (empty), counted, and shown as infeasible
        record = {**self._base(), "prompt_sha256": hashlib.sha256(context.encode("utf-8")).hexdigest(),
                  "infeasible": str(err)}
        return GenerationResult(text="", token_counts=ReproTokenCounts(output_tokens=0, repro=record))

    def _response(self, result) -> GenerationResult:
        stats = result.stats.as_dict() if result.stats is not None else {}
        record = {
            "prompt_sha256": hashlib.sha256(result.prompt.encode("utf-8")).hexdigest(),
            **self._base(),
            "visual_tokens": stats.get("visual_tokens"),
            "visual_tokens_per_layer": stats.get("visual_attention_tokens"),
            "tflops": stats.get("tflops"),
            "stats": stats,
        }
        counts = ReproTokenCounts(input_tokens=stats.get("n_tokens"), output_tokens=len(result.tokens), repro=record)
        return GenerationResult(text=result.text, token_counts=counts)

    @staticmethod
    def _images(visuals: Any, task: str) -> list[Image.Image]:
        visuals = [visuals] if isinstance(visuals, Image.Image) else list(visuals or [])
        bad = [type(v).__name__ for v in visuals if not isinstance(v, Image.Image)]
        if bad:
            raise ReproError(f"task {task} gives non-image visuals ({', '.join(bad)}); the repro model takes images only")
        return [v.convert("RGB") for v in visuals]
