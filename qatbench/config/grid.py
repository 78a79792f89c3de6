"""From a validated suite to the list of runs: names checked against the registries, hparams
filled with the methods' paper defaults, and the grid methods x datasets x models x test envs x
bits x seeds expanded into RunSpecs."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from qatbench.config.catalog import Catalog
from qatbench.config.checkpoints import check_architecture, checkpoint_files, checkpoint_quant, file_sha256
from qatbench.config.protocol import FROM_FP_RUN, SWITCH_AT, Protocol, parse_protocol
from qatbench.config.spec import OBSERVERS, QUANTIZERS, SWITCHES, QuantSpec, RunSpec, parse_bits
from qatbench.config.suite import DatasetEntry, MethodEntry, Suite
from qatbench.errors import UserError, allowed_list, did_you_mean, excerpt

Blame = Callable[[Sequence[str | int]], str]


def check_suite(suite: Suite, catalog: Catalog, blame: Blame) -> None:
    """Raise a one-line UserError for the first unknown name, option or hparam, or for two method
    entries that would share a row label or train the same runs."""
    labels: dict[str, int] = {}
    runs: dict[str, int] = {}
    try:  # the suite's own section must make sense whatever entries it reaches
        QuantSpec(w_bits=4, a_bits=4, **suite.quant.model_dump())
    except ValueError as exc:
        raise UserError(f"{blame(['quant'])}: {exc}") from None
    for i, entry in enumerate(suite.methods):
        hparams = _check_method(entry, catalog, blame, ["methods", i])
        quant = None
        kind = catalog.method_kind(entry.name)
        if kind == "ensemble":
            _check_ensemble(suite, i, hparams, catalog, blame)
        if kind == "checkpoint":
            if isinstance(entry.bits, list):
                raise UserError(
                    f"{blame(['methods', i, 'bits'])}: a checkpoint holds one bit width: FP or one W<w>A<a>, "
                    f"got {entry.bits!r}"
                )
            for file in checkpoint_files(entry, suite.seeds, lambda loc, i=i: blame(["methods", i, *loc])):
                for model in suite.models:
                    check_architecture(file, model.name, lambda loc, i=i: blame(["methods", i, *loc]))
            quant = repr(entry.checkpoint)
        else:
            if entry.checkpoint is not None:
                raise UserError(
                    f"{blame(['methods', i, 'checkpoint'])}: `checkpoint` belongs to entries of method 'checkpoint', "
                    f"not '{entry.name}'"
                )
            _check_entry_bits(entry, kind, lambda loc, i=i: blame(["methods", i, *loc]))
        if kind in ("qat", "ptq") or (kind == "checkpoint" and (entry.bits or "FP") != "FP"):
            _check_quant(suite, entry, catalog, lambda loc, i=i: blame(["methods", i, *loc]), blame)
            quant = sorted(quant_fields(suite, entry, catalog).items())
        elif entry.quant.model_dump(exclude_none=True):
            if kind == "ensemble":
                raise UserError(
                    f"{blame(['methods', i, 'quant'])}: an ensemble's members bring their own quantization; "
                    f"`quant` belongs to the members' entry"
                )
            raise UserError(
                f"{blame(['methods', i, 'quant'])}: method '{entry.name}' trains in full precision; "
                f"`quant` applies to QAT methods only"
            )
        if kind == "ensemble" and entry.steps:
            raise UserError(f"{blame(['methods', i, 'steps'])}: an ensemble evaluates its members' runs; drop `steps`")
        if not catalog.method_trains(entry.name) and entry.steps:
            raise UserError(
                f"{blame(['methods', i, 'steps'])}: method '{entry.name}' does not train (it quantizes the "
                f"full-precision parent after training); drop `steps`"
            )
        protocol = _check_protocol(suite, entry, catalog, lambda loc, i=i: blame(["methods", i, *loc]), blame, i)
        widths = entry_bits(suite, entry) if kind in ("qat", "ptq") else None
        parent = fine_tunes_parent(entry, catalog)
        same = repr((entry.name, sorted(hparams.items()), entry.steps, quant, protocol, widths, parent))
        if same in runs:
            raise UserError(
                f"{blame(['methods', i])}: runs exactly what methods[{runs[same]}] runs; "
                f"change its hparams or steps, or drop it"
            )
        runs[same] = i
        label = entry.label or entry.name
        if label in labels:
            raise UserError(
                f"{blame(['methods', i])}: a second entry labelled '{label}' (the first is "
                f"methods[{labels[label]}]); give each entry its own `label`, which names its rows"
            )
        labels[label] = i
    if suite.parent is not None:
        _check_method(suite.parent, catalog, blame, ["parent"])
        if suite.parent.quant.model_dump(exclude_none=True):
            raise UserError(f"{blame(['parent', 'quant'])}: the parent trains in full precision; it takes no `quant`")
        if suite.parent.protocol is not None:
            raise UserError(f"{blame(['parent', 'protocol'])}: the parent trains from the model as built; drop `protocol`")
        if catalog.method_kind(suite.parent.name) != "fp":
            raise UserError(
                f"{blame(['parent', 'name'])}: the parent of QAT runs must be a full-precision method, "
                f"got '{suite.parent.name}'"
            )
    for i, entry in enumerate(suite.datasets):
        _check_name(entry.name, catalog.dataset_names(), "dataset", blame(["datasets", i, "name"]))
        resolve_options(
            catalog, "dataset", entry.name, entry.options, lambda key, i=i: blame(["datasets", i, "options", key])
        )
        resolve_test_envs(entry, catalog, lambda loc, i=i: blame(["datasets", i, *loc]))
    for i, entry in enumerate(suite.models):
        _check_name(entry.name, catalog.model_names(), "model", blame(["models", i, "name"]))
        resolve_options(
            catalog, "model", entry.name, entry.options, lambda key, i=i: blame(["models", i, "options", key])
        )


def _check_ensemble(suite: Suite, i: int, hparams: dict[str, Any], catalog: Catalog, blame: Blame) -> None:
    """An ensemble names another, non-ensemble entry by its label; its members (one per seed) must
    share one data split, so that the ensemble is evaluated on the splits each member saw (QT-DoG's
    seeds vary `--seed` only; the split's `--trial_seed` stays 0, saqibjaved1/QT-DoG train_all.py)."""
    labels = {entry.label or entry.name: entry for entry in suite.methods}
    members = hparams["members"]
    where = blame(["methods", i, "hparams", "members"])
    own = suite.methods[i].label or suite.methods[i].name
    if members not in labels or members == own:
        others = [label for label in labels if label != own]
        raise UserError(
            f"{where}: no other method entry labelled '{members}'{did_you_mean(members, others)}; "
            f"allowed: {allowed_list(others)}"
        )
    if catalog.method_kind(labels[members].name) == "ensemble":
        raise UserError(f"{where}: '{members}' is itself an ensemble; name the entry whose runs are averaged")
    if len(suite.seeds) > 1:
        for j, dataset in enumerate(suite.datasets):
            if dataset.data_seed is None:
                raise UserError(
                    f"{blame(['datasets', j, 'data_seed'])}: the ensemble methods[{i}] averages runs of "
                    f"{len(suite.seeds)} seeds, which must share one data split; set data_seed (e.g. 0)"
                )


def quant_fields(suite: Suite, entry: MethodEntry, catalog: Catalog) -> dict[str, Any]:
    """The QuantSpec fields of a quantized entry: the suite's `quant`, then what the method fixes,
    then the entry's own `quant`. A method that fixes another quantizer than the suite's (a suite
    comparing LSQ conventions may also hold `pact`), or a PTQ method in a suite of QAT methods
    (which takes the `minmax` observer), does not get the suite's switches of that quantizer."""
    shared = suite.quant.model_dump()
    fixed = dict(catalog.method_quant(entry.name))
    if catalog.method_kind(entry.name) == "ptq" and shared["quantizer"] not in OBSERVERS:
        fixed.setdefault("quantizer", OBSERVERS[0])
    if fixed.get("quantizer", shared["quantizer"]) != shared["quantizer"]:
        foreign = {name: default for name, (default, owners) in SWITCHES.items() if fixed["quantizer"] not in owners}
        shared.update(foreign)
    return {**shared, **fixed, **entry.quant.model_dump(exclude_none=True)}


def _check_quant(suite: Suite, entry: MethodEntry, catalog: Catalog, blame_entry: Blame, blame: Blame) -> None:
    for key, value in catalog.method_quant(entry.name).items():
        given = getattr(entry.quant, key)
        if given is not None and given != value:
            raise UserError(
                f"{blame_entry(['quant', key])}: method '{entry.name}' needs {key} '{value}', got '{given}'"
            )
    fields = quant_fields(suite, entry, catalog)
    allowed = catalog.method_quantizers(entry.name)
    if allowed is None and catalog.method_kind(entry.name) == "qat":
        allowed = tuple(q for q in QUANTIZERS if q not in OBSERVERS)  # observers learn nothing: PTQ only
    if allowed is not None and fields["quantizer"] not in allowed:
        where = blame_entry(["quant", "quantizer"]) if entry.quant.quantizer else blame(["quant", "quantizer"])
        raise UserError(
            f"{where}: method '{entry.name}' trains the quantizers {allowed_list(list(allowed))}, "
            f"not '{fields['quantizer']}'"
        )
    try:
        QuantSpec(w_bits=4, a_bits=4, **fields)
    except ValueError as exc:
        own = set(entry.quant.model_dump(exclude_none=True))
        where = blame_entry(["quant"]) if own else blame(["quant"])
        raise UserError(f"{where}: {exc} (method '{entry.name}' uses quantizer '{fields['quantizer']}')") from None


def entry_protocol(suite: Suite, entry: MethodEntry, catalog: Catalog) -> tuple[str, int]:
    """(name, N) of the protocol an entry trains under: its own `protocol`, else the suite's for
    QAT entries, else from_fp_run (PTQ entries always quantize their FP parent after training)."""
    switch_hparam = catalog.method_switch_hparam(entry.name)
    if switch_hparam is not None:  # the method's own switch step, an hparam (QT-DoG's q_steps)
        hparams = resolve_hparams(catalog.method_hparams(entry.name), entry.hparams, lambda key: "suite")
        return SWITCH_AT, hparams[switch_hparam]
    value = entry.protocol
    if value is None and catalog.method_kind(entry.name) == "qat":
        value = suite.protocol
    return parse_protocol(value) if value is not None else (FROM_FP_RUN, 0)


def _check_protocol(
    suite: Suite, entry: MethodEntry, catalog: Catalog, blame_entry: Blame, blame: Blame, index: int
) -> tuple[str, int]:
    switch_hparam = catalog.method_switch_hparam(entry.name)
    if switch_hparam is not None and entry.protocol is not None:
        raise UserError(
            f"{blame_entry(['protocol'])}: method '{entry.name}' switches quantization on at its hparam "
            f"`{switch_hparam}`; set hparams.{switch_hparam} instead of `protocol`"
        )
    if fine_tunes_parent(entry, catalog):
        return _check_fp_protocol(entry, blame_entry)
    name, switch_at = entry_protocol(suite, entry, catalog)
    own = entry.protocol is not None or switch_hparam is not None
    where = blame_entry(["hparams", switch_hparam] if switch_hparam else ["protocol"]) if own else blame(["protocol"])
    allowed = catalog.method_protocols(entry.name)
    if own and not allowed:
        raise UserError(
            f"{where}: method '{entry.name}' quantizes nothing while it trains; `protocol` applies to QAT methods"
        )
    if name not in allowed and (own or catalog.method_kind(entry.name) == "qat"):
        fix = "" if own else f"; give methods[{index}] its own `protocol`"
        raise UserError(
            f"{where}: method '{entry.name}' (methods[{index}]) trains under the protocols "
            f"{allowed_list(list(allowed))} only, not '{name}'{fix}"
        )
    steps = entry.steps if entry.steps is not None else suite.training.steps
    if name == SWITCH_AT and switch_at >= steps:
        raise UserError(
            f"{where}: {switch_hparam or 'switch_at'} {switch_at} leaves no quantized steps in a run of {steps} "
            f"steps (methods[{index}]); it must be below the run's steps"
        )
    return name, switch_at


def fine_tunes_parent(entry: MethodEntry, catalog: Catalog) -> bool:
    """A full-precision entry with `protocol: from_fp_run` trains on from the finished parent run of its
    seed, in full precision: the control for the extra training of the quantized cells that fine-tune
    that run (their numbers minus this one's are what quantization did, not the further steps)."""
    return catalog.method_kind(entry.name) == "fp" and entry.protocol is not None


def _check_fp_protocol(entry: MethodEntry, blame_entry: Blame) -> tuple[str, int]:
    """A full-precision entry trains from the model as built unless it says `protocol: from_fp_run`."""
    if entry.protocol != FROM_FP_RUN:
        raise UserError(
            f"{blame_entry(['protocol'])}: method '{entry.name}' trains in full precision, from the model as built; "
            f"its only `protocol` is 'from_fp_run' (train on from the finished parent run), got {entry.protocol!r}"
        )
    return FROM_FP_RUN, 0


def _protocol(name: str, switch_at: int, fp_parent: RunSpec) -> Protocol:
    """The run's Protocol; a switch trains its float steps with the suite's parent method."""
    if name == SWITCH_AT:
        return Protocol(name, switch_at, fp_method=fp_parent.method, fp_hparams=dict(fp_parent.hparams))
    return Protocol(name)


def _check_name(name: str, allowed: list[str], kind: str, where: str) -> None:
    if name not in allowed:
        raise UserError(
            f"{where}: unknown {kind} '{name}'{did_you_mean(name, allowed)}; allowed: {allowed_list(allowed)}"
        )


def _check_method(entry: MethodEntry, catalog: Catalog, blame: Blame, loc: list[str | int]) -> dict[str, Any]:
    _check_name(entry.name, catalog.method_names(), "method", blame([*loc, "name"]))
    return resolve_hparams(
        catalog.method_hparams(entry.name), entry.hparams, lambda key: blame([*loc, "hparams", *key])
    )


def resolve_hparams(hparams_cls: type, given: dict[str, Any], blame: Callable[[list], str]) -> dict[str, Any]:
    """The method's full hparams: its paper defaults updated with `given`, types checked."""
    allowed = [f.name for f in fields(hparams_cls)]
    for key in given:
        if key not in allowed:
            raise UserError(
                f"{blame([key])}: unknown hparam '{key}'{did_you_mean(key, allowed)}; allowed: {allowed_list(allowed)}"
            )
    try:
        value = TypeAdapter(hparams_cls).validate_python(dict(given))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = [p for p in error["loc"] if isinstance(p, str)][:1]
        if not key and "error" in error.get("ctx", {}):  # a range check of the hparams' own __post_init__
            raise UserError(f"{blame(key)}: {error['ctx']['error']}") from None
        where = blame(key)
        named = "" if not key or where.endswith(key[0]) else f"hparam '{key[0]}': "  # --set methods[1]={...}
        raise UserError(f"{where}: {named}{error['msg']} (got {error.get('input')!r})") from None
    return asdict(value)


def resolve_options(
    catalog: Catalog, kind: str, name: str, given: dict[str, Any], blame: Callable[[str], str]
) -> dict[str, Any]:
    """Every option of the factory: `given` (names and types checked) and the defaults of the rest,
    so that leaving an option at its default and writing the default give the same run id."""
    parameters = {p.name: p for p in catalog.option_parameters(kind, name)}
    resolved = {}
    for key, value in given.items():
        if key not in parameters:
            raise UserError(
                f"{blame(key)}: unknown option '{key}'{did_you_mean(key, parameters)}; "
                f"allowed: {allowed_list(parameters) or 'none'}"
            )
        annotation = parameters[key].annotation
        if annotation is not inspect.Parameter.empty:
            try:
                value = TypeAdapter(annotation).validate_python(value)
            except ValidationError:
                expected = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
                raise UserError(f"{blame(key)}: expected {expected}, got {excerpt(repr(value))}") from None
        if kind == "model" and isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise UserError(f"{blame(key)}: a model option is a size, a rate or a count, never negative; got {value}")
        resolved[key] = value
    for key, parameter in parameters.items():
        if key not in resolved and parameter.default is not inspect.Parameter.empty:
            resolved[key] = parameter.default
    return resolved


def resolve_test_envs(entry: DatasetEntry, catalog: Catalog, blame: Blame) -> list[tuple[int, ...]]:
    """Each item of `test_envs` as a tuple of environment indices ("all": each one in turn)."""
    try:
        names = catalog.dataset_environments(entry.name, entry.options)
    except UserError as exc:  # an option value the dataset refuses (an unknown corruption)
        raise UserError(f"{blame(['options'])}: {exc}") from None
    test_envs = entry.test_envs if entry.test_envs is not None else catalog.dataset_test_envs(entry.name)
    if test_envs == "none":
        return [()]
    if test_envs == "all" and names is not None and len(names) == 1:
        raise UserError(
            f"{blame(['test_envs'])}: '{entry.name}' has one environment ({names[0]}); "
            f"with it as the test environment none is left to train on; use test_envs: none"
        )
    if test_envs == "all":
        if names is None:
            raise UserError(
                f"{blame(['test_envs'])}: '{entry.name}' learns its environments from disk; "
                f"list the test environments explicitly"
            )
        return [(i,) for i in range(len(names))]
    groups = []
    for i, item in enumerate(test_envs):
        members = item if isinstance(item, list) else [item]
        where = blame(["test_envs", i])
        group = tuple(sorted({index for m in members for index in _env_indices(m, names, entry.name, where)}))
        if names is not None and len(group) == len(names):
            raise UserError(
                f"{blame(['test_envs', i])}: every environment of {entry.name} is a test environment; "
                f"none would be left to train on"
            )
        groups.append(group)
    return groups


def _env_indices(item: int | str, names: list[str] | None, dataset: str, where: str) -> list[int]:
    """An index, a name, or a glob pattern over the names ('*/5': every corruption at severity 5)."""
    if isinstance(item, str) and names is not None and any(c in item for c in "*?["):
        matched = [j for j, name in enumerate(names) if fnmatch.fnmatchcase(name, item)]
        if not matched:
            raise UserError(
                f"{where}: pattern '{item}' matches no environment of {dataset}; it has: {', '.join(names)}"
            )
        return matched
    return [_env_index(item, names, dataset, where)]


def _env_index(item: int | str, names: list[str] | None, dataset: str, where: str) -> int:
    if isinstance(item, int):
        if names is not None and not 0 <= item < len(names):
            raise UserError(
                f"{where}: environment index {item} is out of range; {dataset} has "
                f"{len(names)} environments: {', '.join(f'{j}={n}' for j, n in enumerate(names))}"
            )
        return item
    if names is None:
        raise UserError(f"{where}: name test environments of '{dataset}' by index")
    if item not in names:
        raise UserError(
            f"{where}: unknown environment '{item}'{did_you_mean(item, names)}; {dataset} has: {', '.join(names)}"
        )
    return names.index(item)


def parent_entry(suite: Suite) -> MethodEntry:
    """The FP method QAT runs are fine-tuned from: `parent`, else the suite's `erm`, else `erm`."""
    named = suite.parent.name if suite.parent is not None else "erm"
    if suite.parent is not None and (suite.parent.hparams or suite.parent.steps is not None):
        return suite.parent
    # `parent: erm` (or nothing) means the suite's own erm entry, hparams and all, when it has one
    # (an entry with its own `protocol` fine-tunes that parent: it is never the parent itself)
    own = (m for m in suite.methods if m.name == named and m.protocol is None)
    return next(own, suite.parent or MethodEntry(name="erm"))


def entry_bits(suite: Suite, entry: MethodEntry) -> list[str]:
    """The bit widths of a QAT or PTQ entry: its own `bits` (one or a list), else the suite's."""
    if entry.bits is None:
        return list(suite.bits)
    return [entry.bits] if isinstance(entry.bits, str) else list(entry.bits)


def _check_entry_bits(entry: MethodEntry, kind: str, blame: Blame) -> None:
    """`bits` on a non-checkpoint entry: QAT and PTQ entries only, quantized widths only, each once."""
    if entry.bits is None:
        return
    if kind not in ("qat", "ptq"):
        raise UserError(
            f"{blame(['bits'])}: method '{entry.name}' is not quantized; `bits` belongs to QAT and PTQ entries "
            f"(their bit widths instead of the suite's) and to 'checkpoint' entries"
        )
    widths = [entry.bits] if isinstance(entry.bits, str) else entry.bits
    if not widths or "FP" in widths or len(set(widths)) != len(widths):
        raise UserError(
            f"{blame(['bits'])}: a QAT or PTQ entry's bits are W<w>A<a> widths, each once (e.g. [W4A4, W3A3]); "
            f"got {entry.bits!r}"
        )


def expand(suite: Suite, catalog: Catalog) -> list[RunSpec]:
    """Every run the suite asks for, in a stable order (parents are added by the runner)."""
    no_blame: Blame = lambda loc: "suite"  # noqa: E731  (the suite was checked by check_suite)
    specs: list[RunSpec] = []
    parent = parent_entry(suite)
    for dataset in suite.datasets:
        for test_envs in resolve_test_envs(dataset, catalog, no_blame):
            for model in suite.models:
                for seed in suite.seeds:
                    common = dict(
                        dataset=dataset.name,
                        dataset_options=resolve_options(catalog, "dataset", dataset.name, dataset.options, no_blame),
                        test_envs=test_envs,
                        holdout_fraction=dataset.holdout_fraction,
                        data_seed=seed if dataset.data_seed is None else dataset.data_seed,
                        model=model.name,
                        model_options=resolve_options(catalog, "model", model.name, model.options, no_blame),
                        seed=seed,
                        batch_size=suite.training.batch_size,
                        eval_every=suite.training.eval_every,
                        eval_batch_size=suite.training.eval_batch_size,
                        compile=suite.training.compile,
                        checkpoint_every=suite.training.checkpoint_every,
                        threads=suite.training.threads,
                        diverge_factor=suite.training.diverge_factor,
                        parent_tolerance=suite.training.parent_tolerance,
                        analysis=suite.analysis,
                        suite=suite.name,
                    )
                    steps = suite.training.steps
                    fp_parent = _spec(parent, catalog, common, steps, quant=None, parent=None)
                    for method in suite.methods:
                        if catalog.method_kind(method.name) == "ensemble":
                            continue  # once every seed's runs are known (below)
                        if catalog.method_kind(method.name) == "checkpoint":
                            specs += _checkpoint_spec(suite, method, catalog, common, seed)
                            continue
                        if catalog.method_kind(method.name) == "fp":
                            run_parent = fp_parent if fine_tunes_parent(method, catalog) else None
                            specs.append(_spec(method, catalog, common, steps, quant=None, parent=run_parent))
                            continue
                        method_steps = steps if catalog.method_trains(method.name) else 0
                        protocol = _protocol(*entry_protocol(suite, method, catalog), fp_parent)
                        run_parent = fp_parent if protocol.needs_parent else None
                        for w_bits, a_bits in map(parse_bits, entry_bits(suite, method)):
                            quant = QuantSpec(w_bits, a_bits, **quant_fields(suite, method, catalog))
                            spec = _spec(method, catalog, common, method_steps, quant=quant, parent=run_parent)
                            specs.append(replace(spec, protocol=protocol))
    return _unique(specs + _ensemble_specs(suite, specs, catalog))


def _ensemble_specs(suite: Suite, specs: list[RunSpec], catalog: Catalog) -> list[RunSpec]:
    """One ensemble per dataset, test environment(s), model and bit width of its members' entry,
    over the runs of every seed; named like its first member (seed, data seed), without a parent."""
    ensembles = []
    for entry in suite.methods:
        if catalog.method_kind(entry.name) != "ensemble":
            continue
        hparams = resolve_hparams(catalog.method_hparams(entry.name), entry.hparams, lambda key: "suite")
        groups: dict[str, list[RunSpec]] = {}
        for spec in specs:
            if spec.label == hparams["members"]:
                setting = (spec.dataset, sorted(spec.dataset_options.items()), spec.test_envs, spec.model)
                key = repr((*setting, sorted(spec.model_options.items()), spec.quant))
                groups.setdefault(key, []).append(spec)
        for runs in groups.values():
            members = tuple(sorted(runs, key=lambda s: s.seed))
            ensembles.append(
                replace(
                    members[0],
                    method=entry.name,
                    label=entry.label or entry.name,
                    hparams=hparams,
                    steps=0,
                    parent=None,
                    protocol=Protocol(),  # trains nothing: the members' protocol is theirs
                    members=members,
                    checkpoint=None,
                )
            )
    return ensembles


def _checkpoint_spec(suite: Suite, entry: MethodEntry, catalog: Catalog, common: dict, seed: int) -> list[RunSpec]:
    """The evaluation of the checkpoint this seed owns (none when one file serves the first seed only)."""
    files = checkpoint_files(entry, suite.seeds, lambda loc: "suite")
    position = suite.seeds.index(seed)
    if position >= len(files):
        return []
    file = files[position]
    quant = checkpoint_quant(file, entry, quant_fields(suite, entry, catalog), lambda loc: "suite")
    spec = _spec(entry, catalog, common, 0, quant=quant, parent=None)
    return [replace(spec, steps=0, hparams={"sha256": file_sha256(file)}, checkpoint=str(file))]


def _spec(entry: MethodEntry, catalog: Catalog, common: dict, default_steps: int, *, quant, parent) -> RunSpec:
    hparams = resolve_hparams(catalog.method_hparams(entry.name), entry.hparams, lambda key: "suite")
    steps = entry.steps if entry.steps is not None else default_steps
    return RunSpec(
        method=entry.name,
        label=entry.label or entry.name,
        hparams=hparams,
        quant=quant,
        parent=parent,
        steps=steps,
        **common,
    )


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    seen: set[str] = set()
    unique = []
    for spec in specs:
        if spec.run_id not in seen:
            seen.add(spec.run_id)
            unique.append(spec)
    return unique
