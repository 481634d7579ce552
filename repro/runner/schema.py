"""The declared schema of a sweep spec (pydantic), checked before any model or data loads.

Every field has a type, a range or a set of allowed values; unknown keys are errors; nothing is
coerced (`limit: 0.02` is not a fraction, `limit: 4.5` is not 4, `seeds: [0.5]` is not seed 0).
`problems(raw)` returns every bad field at once, each as `field: what is wrong; the fix`, so a user
fixes a spec in one pass. The semantic checks that need the registries (models, tasks, method
options) live in repro.runner.spec; device availability (repro.devices) is checked when a sweep
starts, since a dry run plans a GPU spec on a CPU machine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from repro.devices import DEVICE_FIX, DEVICE_PATTERN

PROFILES = ("tiny", "paper")
SPLITS = ("test", "validation")
DTYPES = ("float32", "bfloat16", "float16")
ATTNS = ("sdpa", "eager", "flash_attention_2")
FIGURES = ("dop-curves", "dop-proxy")

# What a valid value looks like, per field: the fix an error names.
FIX = {
    "profile": f"one of {', '.join(PROFILES)}",
    "table": "a table name (text), e.g. main",
    "description": "text",
    "models": "a list of model names (see `python -m repro models`), e.g. [tinyworld-llava]",
    "tasks": "a list of task names or a group (tinyworld, paper)",
    "split": f"one of {', '.join(SPLITS)}",
    "limit": "a whole number of documents per task >= 1, or null for all of them",
    "seeds": "a list of whole numbers >= 0, e.g. [0, 1]",
    "dtype": f"one of {', '.join(DTYPES)}",
    "attn": f"one of {', '.join(ATTNS)}",
    "device": DEVICE_FIX,
    "budgets": "a list of budgets (tokens:N, ratio:R, tflops:X, flops-of-tokens:N), or a mapping model -> list "
               "with an optional `default`",
    "methods": "a list of methods, each `- name: NAME` with optional options, budgets, search, label",
    "revision": "a hub revision (text), e.g. main",
    "model_options": "a mapping that maps a model to its options of repro.load, e.g. {llava-next-7b: {protocol: fixed}}",
    "subset": "a document count per task (paper profile), e.g. 500, or {docs: 500, seed: 0}",
    "staged": "a folder of staged paper datasets (text)",
    "figures": f"a list of: {', '.join(FIGURES)}",
    "threads": "a whole number of CPU threads >= 1",
    "workers": "a whole number of local worker processes >= 1",
    "name": "a registered method (see `python -m repro methods`) or none",
    "options": "a mapping of option -> value, e.g. {k: 1}",
    "search": "a mapping of DOP search options, e.g. {samples: 32}",
    "label": "text",
}

EQUAL_FLOPS = "flops-of-tokens"  # spec budgets `flops-of-tokens:N` (repro.runner.spec.resolve_budget)
Text = StrictStr
Positive = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]


def _listed(value: Any) -> Any:
    """A single scalar stands for a one-element list (`seeds: 0` is `seeds: [0]`)."""
    return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


class MethodSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Text
    options: dict[Text, Any] | None = None
    budgets: Any = None  # checked by `budget_problems` (a list, or a mapping per model)
    search: dict[Text, Any] | None = None
    label: Text | None = None


class SpecSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    profile: Literal[PROFILES] = "tiny"  # type: ignore[valid-type]
    table: Text | None = None
    description: Text | None = None
    models: list[Text]
    tasks: list[Text]
    split: Literal[SPLITS] = "test"  # type: ignore[valid-type]
    limit: Positive | None = None
    seeds: list[NonNegative] = [0]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    attn: Literal[ATTNS] = "sdpa"  # type: ignore[valid-type]
    device: Annotated[Text, Field(pattern=DEVICE_PATTERN)] = "cpu"
    budgets: Any = None  # checked by `budget_problems`
    methods: list[MethodSchema]
    revision: Text = "main"
    model_options: dict[Text, dict[Text, Any]] | None = None  # names checked per family by spec._model_options
    subset: Any = None  # `N` or {docs: N, seed: S}: checked by spec._subset
    staged: Text | None = None
    figures: list[Literal[FIGURES]] = []  # type: ignore[valid-type]
    threads: Positive | None = None
    workers: Positive | None = None

    @field_validator("models", "tasks", "seeds", "figures", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return _listed(value)

    @field_validator("methods", mode="before")
    @classmethod
    def _names_are_methods(cls, value: Any) -> Any:
        """`- fastv` is `- name: fastv`."""
        value = _listed(value)
        return [{"name": m} if isinstance(m, str) else m for m in value] if isinstance(value, list) else value


def problems(raw: dict[str, Any]) -> list[str]:
    """Every schema violation of a raw spec mapping, as `field: problem; fix` lines."""
    try:
        SpecSchema.model_validate(raw)
        out = []
    except ValidationError as err:
        out = [_describe(e) for e in err.errors()]
    out += budget_problems(raw.get("budgets"), "budgets", raw.get("models"))
    for i, m in enumerate(raw.get("methods") or [] if isinstance(raw.get("methods"), list) else []):
        if isinstance(m, dict):
            out += budget_problems(m.get("budgets"), f"methods.{i}.budgets", raw.get("models"))
            if m.get("name") == "none" and (m.get("options") or m.get("budgets") or m.get("search")):
                out.append(f"methods.{i}: `none` is the unpruned model and takes no options, budgets or search; "
                           "remove them")
    seeds = _listed(raw.get("seeds"))
    if isinstance(seeds, list):
        duplicates = sorted({s for s in seeds if isinstance(s, int) and seeds.count(s) > 1})
        if duplicates:
            out.append(f"seeds: {duplicates} listed twice; list each seed once")
    return list(dict.fromkeys(out))


def budget_problems(value: Any, where: str, models: Any) -> list[str]:
    """A budget list (or model -> list mapping) whose every entry parses as a budget."""
    from repro.budget import as_budget
    from repro.errors import ReproError

    if value is None:
        return []
    if isinstance(value, dict):
        known = set(_listed(models) or []) if isinstance(_listed(models), list) else set()
        out = []
        for model, budgets in value.items():
            if model != "default" and known and model not in known:
                out.append(f"{where}.{model}: not a model of this spec ({', '.join(map(str, sorted(known)))}); "
                           "use one of them or `default`")
            out += budget_problems(budgets, f"{where}.{model}", None) if not isinstance(budgets, dict) else \
                [f"{where}.{model}: {FIX['budgets']}"]
        return out
    values = _listed(value)
    if not isinstance(values, list):
        return [f"{where}: got {type(value).__name__}; use {FIX['budgets']}"]
    out = []
    for i, b in enumerate(values):
        if not isinstance(b, str):
            out.append(f"{where}.{i}: {b!r} is not a budget; use tokens:N, ratio:R or tflops:X (e.g. ratio:0.5)")
            continue
        if b.startswith(EQUAL_FLOPS + ":"):  # resolved per model by spec.resolve_budget (checked there)
            if not b.partition(":")[2].isdigit():
                out.append(f"{where}.{i}: {b!r}: {EQUAL_FLOPS}:N needs a whole number N of visual tokens")
            continue
        try:
            as_budget(b)
        except ReproError as err:
            out.append(f"{where}.{i}: {err}")
    return out


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    field = ".".join(loc) or "spec"
    named = next((p for p in reversed(loc) if p in FIX), None)
    fix = FIX.get(named, "") if named else ""
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = sorted(MethodSchema.model_fields if len(loc) > 1 and loc[0] == "methods" else SpecSchema.model_fields)
        return f"{field}: unknown key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{field}: missing; give {fix}"
    got = error.get("input")
    return f"{field}: {got!r} is not valid ({error['msg'].lower()}); use {fix}" if fix else \
        f"{field}: {got!r} is not valid ({error['msg'].lower()})"
