"""The bad-input corpus: recipes, app configs and data files that must each be refused with one clear message
naming the file and the field or line, exit status 2, and nothing written.

Recipe cases are ``(id, recipe text, fragments)``: ``{path}`` in a fragment is replaced by the recipe's path, and
every fragment must appear in the message. Data files are built by the functions of :mod:`tests.reliability.
datafiles` (small files generated at test time; nothing binary is committed).
"""

from __future__ import annotations

from dataclasses import dataclass

HPO_HEAD = """\
campaign: bad
datasets:
  - {name: demo-emt, count: 4}
stages:
  hpo:
    - name: a
      family: painn
"""


@dataclass(frozen=True)
class RecipeCase:
    """A recipe that must be refused: its text and the fragments its message must contain."""

    id: str
    text: str
    fragments: tuple[str, ...]


def _hpo(space: str, extra: str = "") -> str:
    return HPO_HEAD + extra + "      search_space:\n" + space


RECIPE_CASES: list[RecipeCase] = [
    # ---------------------------------------------------------------- malformed YAML
    RecipeCase("yaml-unclosed-flow", "campaign: [unclosed\n", ("{path}:2:", "malformed YAML")),
    RecipeCase("yaml-bad-indent", "campaign: x\n  site: local\n", ("{path}:2:", "malformed YAML")),
    RecipeCase("yaml-tab-indent", "campaign: x\nsite:\n\tname: local\n", ("{path}:3:", "malformed YAML")),
    RecipeCase("yaml-duplicate-key", "campaign: x\nseed: 1\nseed: 2\n", ("{path}:3:", "duplicate key 'seed'")),
    RecipeCase("yaml-unclosed-quote", 'campaign: "x\nseed: 1\n', ("{path}:", "malformed YAML")),
    RecipeCase("yaml-python-tag", "campaign: !!python/object:os.system x\n", ("{path}:1:", "malformed YAML")),
    RecipeCase("yaml-empty", "", ("{path}:1:", "the recipe is empty")),
    RecipeCase("yaml-comment-only", "# nothing here\n", ("{path}:1:", "the recipe is empty")),
    RecipeCase("yaml-top-level-list", "- campaign: x\n", ("{path}:1:", "must be a mapping")),
    RecipeCase("yaml-top-level-scalar", "just a string\n", ("{path}:1:", "must be a mapping")),
    # ---------------------------------------------------------------- wrong types
    RecipeCase("type-seed-string", "campaign: x\nseed: many\n", ("{path}:2:", "seed", "integer")),
    RecipeCase("type-datasets-mapping", "campaign: x\ndatasets: {name: demo-emt}\n", ("{path}:2:", "datasets")),
    RecipeCase("type-count-float", "campaign: x\ndatasets:\n  - {name: demo-emt, count: 2.5}\n",
               ("{path}:3:", "datasets[0].count")),
    RecipeCase("type-site-list", "campaign: x\nsite: [local]\n", ("{path}:2:", "site")),
    RecipeCase("type-cutoff-string", "campaign: x\nstages:\n  preprocess: {cutoff: far}\n",
               ("{path}:3:", "stages.preprocess.cutoff")),
    RecipeCase("type-split-short", "campaign: x\nstages:\n  preprocess:\n    split: [0.5, 0.5]\n",
               ("{path}:4:", "stages.preprocess.split")),
    RecipeCase("type-max-trials-string", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n",
                                              "      max_trials: lots\n"),
               ("{path}:8:", "stages.hpo[0].max_trials")),
    RecipeCase("type-campaign-missing", "seed: 1\n", ("{path}:1:", "campaign", "Field required")),
    # ---------------------------------------------------------------- unknown keys
    RecipeCase("unknown-top-level", "campaign: x\nunknown_key: 1\n", ("{path}:2:", "unknown_key", "unknown key")),
    RecipeCase("unknown-site-key", "campaign: x\nsite:\n  name: local\n  gpus: 4\n", ("{path}:4:", "site.gpus")),
    RecipeCase("unknown-dataset-key", "campaign: x\ndatasets:\n  - name: demo-emt\n    path: a.xyz\n",
               ("{path}:4:", "datasets[0].path", "unknown key")),
    RecipeCase("unknown-stage", "campaign: x\nstages:\n  pretrain: {}\n", ("{path}:3:", "stages.pretrain")),
    RecipeCase("unknown-hpo-key", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n", "      optimiser: cbo\n"),
               ("{path}:8:", "stages.hpo[0].optimiser", "unknown key")),
    RecipeCase("unknown-param-key", _hpo("        lr: {type: float, low: 0.001, high: 0.1, step: 2}\n"),
               ("{path}:9:", "stages.hpo[0].search_space.lr.step")),
    # ---------------------------------------------------------------- zero / negative nodes and counts
    RecipeCase("nodes-per-trial-zero", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n",
                                            "      nodes_per_trial: 0\n"),
               ("{path}:8:", "stages.hpo[0].nodes_per_trial", "greater than or equal to 1")),
    RecipeCase("nodes-per-trial-negative", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n",
                                                "      nodes_per_trial: -4\n"),
               ("{path}:8:", "stages.hpo[0].nodes_per_trial")),
    RecipeCase("nodes-per-block-zero", "campaign: x\nsite: {name: local, nodes_per_block: 0}\n",
               ("{path}:2:", "site.nodes_per_block")),
    RecipeCase("train-nodes-negative", "campaign: x\nstages:\n  train: {nodes: -1}\n",
               ("{path}:3:", "stages.train.nodes")),
    RecipeCase("workers-zero", "campaign: x\nsite: {name: local, workers: 0}\n", ("{path}:2:", "site.workers")),
    RecipeCase("count-zero", "campaign: x\ndatasets:\n  - {name: demo-emt, count: 0}\n",
               ("{path}:3:", "datasets[0].count")),
    RecipeCase("hpo-defaults-negative-nodes",
               "campaign: x\nhpo_defaults: {nodes_per_trial: -2}\ndatasets:\n  - {name: demo-emt}\nstages:\n"
               "  hpo:\n    - name: a\n      family: painn\n      search_space:\n"
               "        lr: {type: float, low: 0.001, high: 0.1}\n",
               ("{path}:2:", "hpo_defaults.nodes_per_trial")),  # where the mistake is written, once
    # ---------------------------------------------------------------- unknown dataset, site, family, profile
    RecipeCase("unknown-dataset", "campaign: x\ndatasets:\n  - {name: imaginary-1x}\n",
               ("{path}:3:", "datasets[0].name", "unknown dataset 'imaginary-1x'")),
    RecipeCase("unknown-site", "campaign: x\nsite: {name: mars}\n", ("{path}:2:", "site.name", "unknown site 'mars'")),
    RecipeCase("unknown-family", HPO_HEAD.replace("painn", "transformer") +
               "      search_space:\n        lr: {type: float, low: 0.001, high: 0.1}\n",
               ("{path}:7:", "stages.hpo[0].family", "unknown family 'transformer'")),
    RecipeCase("unknown-precision", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n", "      precision: fp8\n"),
               ("{path}:8:", "stages.hpo[0].precision", "fp8")),
    RecipeCase("hpo-dataset-not-listed", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n",
                                              "      datasets: [demo-gfn2]\n"),
               ("{path}:", "demo-gfn2", "does not list")),
    RecipeCase("globus-without-endpoint", "campaign: x\nsite: {name: globus}\n", ("{path}:2:", "endpoint_id")),
    # ---------------------------------------------------------------- empty or inverted search spaces
    RecipeCase("space-empty", _hpo("        {}\n").replace("search_space:\n        {}", "search_space: {}"),
               ("{path}:8:", "stages.hpo[0].search_space")),
    RecipeCase("space-missing", HPO_HEAD, ("{path}:6:", "stages.hpo[0].search_space", "Field required")),
    RecipeCase("space-int-inverted", _hpo("        layers: {type: int, low: 4, high: 1}\n"),
               ("{path}:9:", "search_space.layers", "inverted")),
    RecipeCase("space-int-empty", _hpo("        layers: {type: int, low: 3, high: 3}\n"),
               ("{path}:9:", "search_space.layers", "empty or inverted")),
    RecipeCase("space-float-inverted", _hpo("        lr: {type: float, low: 0.1, high: 0.01}\n"),
               ("{path}:9:", "search_space.lr", "inverted")),
    RecipeCase("space-log-nonpositive", _hpo("        lr: {type: float, low: 0.0, high: 0.1, log: true}\n"),
               ("{path}:9:", "search_space.lr", "log-uniform")),
    RecipeCase("space-categorical-empty", _hpo("        hidden: {type: categorical, choices: []}\n"),
               ("{path}:9:", "search_space.hidden.choices")),
    RecipeCase("space-categorical-duplicates", _hpo("        hidden: {type: categorical, choices: [16, 16]}\n"),
               ("{path}:9:", "search_space.hidden.choices", "distinct")),
    RecipeCase("space-unknown-type", _hpo("        lr: {type: gaussian, mean: 0.01}\n"),
               ("{path}:9:", "search_space.lr")),
    RecipeCase("space-searched-and-fixed", _hpo("        cutoff: {type: float, low: 4.0, high: 6.0}\n",
                                                "      fixed: {cutoff: 5.0}\n"),
               ("{path}:6:", "'cutoff' is both searched and fixed")),
    # ---------------------------------------------------------------- other invalid values
    RecipeCase("split-not-summing", "campaign: x\nstages:\n  preprocess:\n    split: [0.5, 0.2, 0.2]\n",
               ("{path}:4:", "stages.preprocess.split", "sum to 1")),
    RecipeCase("walltime-format", "campaign: x\nsite: {name: local, walltime: 2h}\n", ("{path}:2:", "site.walltime")),
    RecipeCase("blocks-inverted", "campaign: x\nsite: {name: local, min_blocks: 3, max_blocks: 1}\n",
               ("{path}:2:", "site", "min_blocks (3) exceeds max_blocks (1)")),
    RecipeCase("campaign-name-chars", "campaign: 'a b/c'\n", ("{path}:1:", "campaign", "pattern")),
    RecipeCase("dataset-twice", "campaign: x\ndatasets:\n  - {name: demo-emt}\n  - {name: demo-emt}\n",
               ("{path}:1:", "dataset 'demo-emt' listed twice")),
    RecipeCase("hpo-name-twice", _hpo("        lr: {type: float, low: 0.001, high: 0.1}\n") +
               "    - name: a\n      family: schnet\n      search_space:\n"
               "        lr: {type: float, low: 0.001, high: 0.1}\n",
               ("{path}:5:", "stages.hpo", "duplicate HPO campaign name 'a'")),
    RecipeCase("screen-atoms-inverted", "campaign: x\nstages:\n  screen: {min_atoms: 9, max_atoms: 3}\n",
               ("{path}:3:", "stages.screen", "min_atoms (9) exceeds max_atoms (3)")),
    RecipeCase("cutoff-zero", "campaign: x\nstages:\n  preprocess: {cutoff: 0}\n",
               ("{path}:3:", "stages.preprocess.cutoff", "greater than 0")),
    RecipeCase("weight-negative", "campaign: x\ndatasets:\n  - {name: demo-emt, weight: -1}\n",
               ("{path}:3:", "datasets[0].weight")),
]
